# SPT-LoRA on Mask R-CNN, Swin-T (ImageNet-1k, stock pretrained URL), COCO 1x; neck and heads
# trained.
# Stock schedule and optimizer (the papers follow the stock dense-task settings).
# Run the sensitivity analysis first; it writes `spt_allocation` below (which weights get
# LoRA / adapters and which are tuned entry-wise within the 0.4M budget):
#   python tools/analysis_tools/spt_sensitivity.py \
#       configs/spt/spt-lora_mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py --budget 0.4M
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

spt_allocation = ('work_dirs/spt_allocations/'
                  'spt-lora_mask-rcnn_swin-t-p4-w7_fpn_1x_coco/allocation.json')
# dropout 0.1 on the LoRA inputs (not the attention projection's) and drop-path 0.1 on the LoRA
# outputs: the official SPT-LoRA regularisation (ziplab/SPT)
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           peft=dict(type='SPTLoRA', allocation=spt_allocation,
                                     dropout=0.1, drop_path=0.1)))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
