# Stock mmseg SETR-PUP (ViT, fused nn.MultiheadAttention) with tiny dims.
_base_ = 'mmseg::setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py'
data_root = 'data/test_ade/'
crop_size = (64, 64)
dims = 32
norm_cfg = dict(type='SyncBN', requires_grad=True)
aux = dict(type='SETRUPHead', in_channels=dims, channels=16, num_classes=150, dropout_ratio=0,
           norm_cfg=norm_cfg, act_cfg=dict(type='ReLU'), num_convs=2, kernel_size=3,
           align_corners=False,
           loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4))
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, embed_dims=dims, num_layers=4, num_heads=2, mlp_ratio=2,
                  out_indices=(0, 1, 2, 3), init_cfg=None),
    decode_head=dict(in_channels=dims, channels=16),
    auxiliary_head=[dict(aux, in_index=0), dict(aux, in_index=1), dict(aux, in_index=2)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
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
