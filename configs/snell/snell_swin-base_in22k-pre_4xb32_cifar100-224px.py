# SNELL-8 (sparsity 0.9; every block Linear, separate q / k / v updates; the official Dropout(0.1)
# on the update inputs except proj and DropPath(0.1) on the update outputs) on Swin-B
# (ImageNet-22k), CIFAR-100 at 224 px (100-class head trained).
# lr 5e-3, 4 GPUs x 32 images: our choice (no published recipe for this method here): the SSF recipe
# of this backbone.
_base_ = '../_base_/swin-base_in22k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           peft=dict(type='SNELL', r=8, sparsity=0.9, drop_path=0.1,
                                     targets=dict(qkv=dict(dropout=0.1), proj=None,
                                                  fc1=dict(dropout=0.1), fc2=dict(dropout=0.1)))))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor', optimizer=dict(lr=5e-3))
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
