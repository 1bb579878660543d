# CIFAR-100 at 224 px on ViT-B/16 pre-trained on ImageNet-21k: a *stock* mmpretrain config (no
# mmssf). The method configs in configs/<method>/ inherit it and add a few lines; merged
# checkpoints (X_merged.pth) are evaluated with it by tools/misc/eval_stock.py.
# Recipe of the SSF paper (Sec. 4.1) and its official scripts (train_scripts/vit/cifar_100/*.sh):
# AdamW, wd 0.05, 100 epochs, 10 warm-up epochs then cosine decay, timm's "stronger" augmentation
# (RandomResizedCrop, flip, RandAugment m9-mstd0.5, RandomErasing 0.25, Mixup 0.8 / CutMix 1.0,
# label smoothing 0.1), drop-path 0. The learning rate and batch size are set per method.
_base_ = [
    'mmpretrain::_base_/models/vit-base-p16.py',
    'mmpretrain::_base_/datasets/cifar100_bs16.py',
    'mmpretrain::_base_/default_runtime.py',
]

# backbone-level mmpretrain keys, written from the ImageNet-21k timm / Google ViT-B/16 by
#   python tools/model_converters/vit_timm_to_mm.py SRC pretrain/vit-base-p16_in21k_mmpretrain.pth \
#       --target mmpretrain
pretrained = 'pretrain/vit-base-p16_in21k_mmpretrain.pth'

model = dict(
    backbone=dict(
        drop_rate=0.0,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint=pretrained)),
    head=dict(num_classes=100),  # VisionTransformerClsHead, no pre-logits layer: 76,900 params
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

# the ImageNet-21k ViT normalises to [-1, 1]; CIFAR arrays are already RGB
data_preprocessor = dict(num_classes=100, mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5],
                         to_rgb=False)
mean_rgb = [127.5, 127.5, 127.5]
std_rgb = [127.5, 127.5, 127.5]
train_pipeline = [
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in mean_rgb], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=mean_rgb, fill_std=std_rgb),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='Resize', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=32, num_workers=8, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=64, num_workers=8, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    # as timm: no decay on biases, norms, 1-d parameters, position embedding and cls token
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0,
                       custom_keys={'.pos_embed': dict(decay_mult=0.0),
                                    '.cls_token': dict(decay_mult=0.0)}))
max_epochs = 100
warmup_epochs = 10
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-8, by_epoch=True, begin=warmup_epochs,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(interval=10, max_keep_ckpts=2))
# 4 GPUs x 32 images; `tools/train.py --auto-scale-lr` rescales lr for another total batch size
auto_scale_lr = dict(base_batch_size=128)
