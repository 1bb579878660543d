# DoRA (r=8 on qkv) on Mask R-CNN, Swin-T (ImageNet-1k, stock pretrained URL), COCO 1x; neck and
# heads trained.
# Stock schedule and optimizer (the papers follow the stock dense-task settings).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           peft=dict(type='DoRA', r=8, targets=['qkv'])))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
