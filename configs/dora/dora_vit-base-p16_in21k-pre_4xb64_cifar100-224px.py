# DoRA (r=8 on qkv) on ViT-B/16 (ImageNet-21k), CIFAR-100 at 224 px (100-class head trained).
# lr 1e-3, 4 GPUs x 64 images: our choice (no published recipe for this method here): the SSF recipe
# of this backbone.
_base_ = '../_base_/vit-base-p16_in21k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='DoRA', r=8, targets=['qkv'])))
train_dataloader = dict(batch_size=64)
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor', optimizer=dict(lr=1e-3))
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
auto_scale_lr = dict(base_batch_size=256)
