# SNELL-8 (sparsity 0.9; every block Linear, separate q / k / v updates; the official Dropout(0.1)
# on the update inputs except proj and DropPath(0.1) on the update outputs) on Mask R-CNN, Swin-T
# (ImageNet-1k, stock pretrained URL), COCO 1x; neck and heads trained.
# Stock schedule and optimizer (the papers follow the stock dense-task settings).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           peft=dict(type='SNELL', r=8, sparsity=0.9, drop_path=0.1,
                                     targets=dict(qkv=dict(dropout=0.1), proj=None,
                                                  fc1=dict(dropout=0.1), fc2=dict(dropout=0.1)))))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
