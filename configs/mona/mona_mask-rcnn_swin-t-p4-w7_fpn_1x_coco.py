# Mona (bottleneck 64, after the attention and the MLP of every block) on Mask R-CNN, Swin-T
# (ImageNet-1k, stock pretrained URL), COCO 1x; neck and heads trained.
# Stock schedule and optimizer (the papers follow the stock dense-task settings).
# Not mergeable: ReparamCheckpointHook logs why and writes no _merged file.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           peft=dict(type='Mona')))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
