# Full fine-tuning on ViT-B/16 (ImageNet-21k), CIFAR-100 at 224 px (100-class head trained).
# lr 5e-5, 4 GPUs x 32 images: the official SSF script train_scripts/vit/cifar_100/train_full.sh.
_base_ = '../_base_/vit-base-p16_in21k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='Full')))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor', optimizer=dict(lr=5e-5))
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
