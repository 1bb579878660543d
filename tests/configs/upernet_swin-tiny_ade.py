# Stock mmseg UperNet Swin-T config with tiny dims, for generated ADE20K-format data.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
data_root = 'data/test_ade/'
crop_size = (64, 64)
dims = 32
model = dict(
    data_preprocessor=dict(size=crop_size), pretrained=None,
    backbone=dict(embed_dims=dims, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], init_cfg=None,
                  drop_path_rate=0.0, pretrain_img_size=64),
    decode_head=dict(in_channels=[dims, 2 * dims, 4 * dims, 8 * dims], channels=dims),
    auxiliary_head=dict(in_channels=4 * dims, channels=dims // 2))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(72, 72), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
randomness = dict(seed=0)
