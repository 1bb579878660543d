# Mona (bottleneck 64, after the attention and the MLP of every block) on UperNet, Swin-T
# (ImageNet-1k, stock pretrained URL), ADE20K 160k; decode and auxiliary heads trained.
# Stock schedule and optimizer (the papers follow the stock dense-task settings).
# Not mergeable: ReparamCheckpointHook logs why and writes no _merged file.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           peft=dict(type='Mona')))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
