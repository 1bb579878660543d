# SPT-LoRA on SETR-PUP, ViT-L (ImageNet-21k), ADE20K 160k; decode and auxiliary heads fully
# trained, as the SPT paper.
# Stock schedule and optimizer (the papers follow the stock dense-task settings).
# Run the sensitivity analysis first; it writes `spt_allocation` below (which weights get
# LoRA / adapters and which are tuned entry-wise within the 0.4M budget):
#   python tools/analysis_tools/spt_sensitivity.py \
#       configs/spt/spt-lora_setr_vit-l_pup_8xb2-160k_ade20k-512x512.py --budget 0.4M
_base_ = 'mmseg::setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

spt_allocation = ('work_dirs/spt_allocations/'
                  'spt-lora_setr_vit-l_pup_8xb2-160k_ade20k-512x512/allocation.json')
pretrained = 'pretrain/vit-large-p16_in21k_mmseg.pth'  # mmseg keys, no prefix
# dropout 0.1 on the LoRA inputs (not the attention projection's) and drop-path 0.1 on the LoRA
# outputs: the official SPT-LoRA regularisation (ziplab/SPT). The LoRAs inside mmseg's
# nn.MultiheadAttention (fused q/k/v, out_proj) cannot take them and train without (a warning
# lists them).
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained),
                           peft=dict(type='SPTLoRA', allocation=spt_allocation,
                                     dropout=0.1, drop_path=0.1)))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
