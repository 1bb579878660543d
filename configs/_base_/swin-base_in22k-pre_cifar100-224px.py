# CIFAR-100 at 224 px on Swin-B (patch 4, window 7) pre-trained on ImageNet-22k: a *stock*
# mmpretrain config (no mmssf). The method configs in configs/<method>/ inherit it and add a few
# lines; merged checkpoints (X_merged.pth) are evaluated with it by tools/misc/eval_stock.py.
# Recipe of the SSF paper (Sec. 4.1) and its official scripts (train_scripts/swin/cifar_100/*.sh):
# AdamW, wd 0.05, 100 epochs, 10 warm-up epochs then cosine decay, timm's "stronger" augmentation
# (RandomResizedCrop, flip, RandAugment m9-mstd0.5, RandomErasing 0.25, Mixup 0.8 / CutMix 1.0,
# label smoothing 0.1), drop-path 0 (0.1 for full fine-tuning). lr / batch size are set per method.
_base_ = [
    'mmpretrain::_base_/models/swin_transformer/base_224.py',
    'mmpretrain::_base_/datasets/cifar100_bs16.py',
    'mmpretrain::_base_/default_runtime.py',
]

# backbone-level mmpretrain keys, written from the official ImageNet-22k checkpoint by
#   python tools/model_converters/swin_official_to_mm.py swin_base_patch4_window7_224_22k.pth \
#       pretrain/swin-base-p4-w7_in22k_mmpretrain.pth
pretrained = 'pretrain/swin-base-p4-w7_in22k_mmpretrain.pth'

model = dict(
    backbone=dict(
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # LinearClsHead (no hidden layer): 102,500 params. Its init moves here from the model-level
    # init_cfg below, which re-initialises every Linear / LayerNorm of the model (the backbone
    # then reloads its pretrained weights; mmssf.PeftBackbone does that too): only the head
    # needs it.
    head=dict(num_classes=100,
              init_cfg=dict(_delete_=True, type='TruncNormal', layer='Linear', std=0.02,
                            bias=0.)),
    init_cfg=None)

# ImageNet normalisation (the Swin pre-training); CIFAR arrays are already RGB
mean_rgb = [123.675, 116.28, 103.53]
std_rgb = [58.395, 57.12, 57.375]
data_preprocessor = dict(num_classes=100, mean=mean_rgb, std=std_rgb, to_rgb=False)
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
    # as timm: no decay on biases, norms, 1-d parameters and relative position bias tables
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0,
                       custom_keys={'.absolute_pos_embed': dict(decay_mult=0.0),
                                    '.relative_position_bias_table': dict(decay_mult=0.0)}))
max_epochs = 100
warmup_epochs = 10
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=5e-8, by_epoch=True, begin=warmup_epochs,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(interval=10, max_keep_ckpts=2))
# 4 GPUs x 32 images; `tools/train.py --auto-scale-lr` rescales lr for another total batch size
auto_scale_lr = dict(base_batch_size=128)
