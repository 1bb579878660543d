# SSF on the tiny Swin Mask R-CNN: the stock demo config plus these lines.
_base_ = './mask-rcnn_swin-tiny_demo-coco.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           peft=dict(type='SSF')))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor', optimizer=dict(lr=1e-2))
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
