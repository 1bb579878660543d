# Mona (bottleneck 64, after the attention and the MLP of every block) on Swin-B (ImageNet-22k),
# CIFAR-100 at 224 px (100-class head trained).
# lr 5e-3, 4 GPUs x 32 images: our choice (no published recipe for this method here): the SSF recipe
# of this backbone.
# Not mergeable: ReparamCheckpointHook logs why and writes no _merged file.
_base_ = '../_base_/swin-base_in22k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           peft=dict(type='Mona')))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor', optimizer=dict(lr=5e-3))
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
