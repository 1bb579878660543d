# Adapter+ (bottleneck 8 after every block, channel-wise scaling, Houlsby init, adapter drop-path
# 0.1) on ViT-B/16 (ImageNet-21k), CIFAR-100 at 224 px (100-class head trained).
# Optimizer and schedule of the official recipe (visinf/adapter_plus conf/train/default.yaml,
# conf/train/optimizer/adamw.yaml, conf/data/base_data.yaml, conf/config.yaml): AdamW lr 1e-3,
# weight decay 1e-4, batch 64, 100 epochs, 10 warm-up epochs from lr / 100, cosine to lr / 1000,
# ViT drop-path 0.1. The official recipe is for VTAB-1k / FGVC; CIFAR-100 keeps the base config's
# augmentation. Not mergeable: ReparamCheckpointHook logs why and writes no _merged file.
_base_ = '../_base_/vit-base-p16_in21k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           drop_path_rate=0.1, peft=dict(type='AdapterPlus')))
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor',
                     optimizer=dict(lr=1e-3, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=10, end=100,
         convert_to_iter_based=True)]
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
auto_scale_lr = dict(base_batch_size=64)
