# DoRA (r=8 on qkv) on UperNet, Swin-T (ImageNet-1k, stock pretrained URL), ADE20K 160k; decode and
# auxiliary heads trained.
# Stock schedule and optimizer (the papers follow the stock dense-task settings).
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           peft=dict(type='DoRA', r=8, targets=['qkv'])))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
