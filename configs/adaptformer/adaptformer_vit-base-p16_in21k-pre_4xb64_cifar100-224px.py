# AdaptFormer-64 (parallel AdaptMLP, s = 0.1, dropout 0.1) on ViT-B/16 (ImageNet-21k), CIFAR-100 at
# 224 px (100-class head trained).
# Optimizer and schedule of the official image recipe (ShoufaChen/AdaptFormer main_image.py and
# README: SGD momentum 0.9, weight decay 0, base lr 0.1 per 256 images (lr = 0.1 x batch / 256),
# 100 epochs, 20 warm-up epochs then cosine to 0, drop-path 0). Not the official: the in21k weights
# (the official CIFAR-100 run fine-tunes MAE weights), the base config's augmentation, no BatchNorm
# before the head. Not mergeable: ReparamCheckpointHook logs why and writes no _merged file.
_base_ = '../_base_/vit-base-p16_in21k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='AdaptFormer')))
train_dataloader = dict(batch_size=64)
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor', optimizer=dict(
    _delete_=True, type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=20, end=100,
         convert_to_iter_based=True)]
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
auto_scale_lr = dict(base_batch_size=256)
