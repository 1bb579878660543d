# Full fine-tuning on Swin-B (ImageNet-22k), CIFAR-100 at 224 px (100-class head trained).
# lr 5e-5, 4 GPUs x 32 images: the official SSF script train_scripts/swin/cifar_100/train_full.sh.
_base_ = '../_base_/swin-base_in22k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           drop_path_rate=0.1,  # official full fine-tuning script
                           peft=dict(type='Full')))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor', optimizer=dict(lr=5e-5))
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
