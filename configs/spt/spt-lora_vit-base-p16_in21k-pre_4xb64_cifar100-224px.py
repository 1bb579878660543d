# SPT-LoRA on ViT-B/16 (ImageNet-21k), CIFAR-100 at 224 px (100-class head trained).
# lr 1e-3, 4 GPUs x 64 images: our choice (no published recipe for this method here): the SSF
# recipe of this backbone.
# Run the sensitivity analysis first; it writes `spt_allocation` below (which weights get
# LoRA / adapters and which are tuned entry-wise within the 0.4M budget):
#   python tools/analysis_tools/spt_sensitivity.py \
#       configs/spt/spt-lora_vit-base-p16_in21k-pre_4xb64_cifar100-224px.py --budget 0.4M
_base_ = '../_base_/vit-base-p16_in21k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

spt_allocation = ('work_dirs/spt_allocations/'
                  'spt-lora_vit-base-p16_in21k-pre_4xb64_cifar100-224px/allocation.json')
# dropout 0.1 on the LoRA inputs (not the attention projection's) and drop-path 0.1 on the LoRA
# outputs: the official SPT-LoRA regularisation (ziplab/SPT)
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='SPTLoRA', allocation=spt_allocation,
                                     dropout=0.1, drop_path=0.1)))
train_dataloader = dict(batch_size=64)
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor', optimizer=dict(lr=1e-3))
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
auto_scale_lr = dict(base_batch_size=256)
