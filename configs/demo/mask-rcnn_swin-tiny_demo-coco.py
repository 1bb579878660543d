# A *stock* mmdet config (no mmssf in it): the upstream Swin-T Mask R-CNN with tiny dims, on the
# small generated COCO-format data (python -m mmssf.datasets.generate coco data/demo_coco).
# It is what evaluates the merged SSF checkpoint in `make demo`.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

data_root = 'data/demo_coco/'
classes = ('person', 'car', 'dog')  # mmssf.datasets.COCO_CLASSES
dims = 32
image_scale = (160, 120)

model = dict(
    backbone=dict(embed_dims=dims, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8],
                  drop_path_rate=0.0, init_cfg=None),
    neck=dict(in_channels=[dims, 2 * dims, 4 * dims, 8 * dims], out_channels=dims),
    rpn_head=dict(in_channels=dims, feat_channels=dims),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=dims),
        bbox_head=dict(in_channels=dims, fc_out_channels=4 * dims, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=dims),
        mask_head=dict(in_channels=dims, conv_out_channels=dims, num_classes=len(classes))),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=300),
                   rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=train_pipeline,
                 filter_cfg=dict(filter_empty_gt=True, min_size=0)))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

max_epochs = 4
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True, begin=0, end=max_epochs)]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(logger=dict(interval=5),
                     checkpoint=dict(interval=max_epochs, max_keep_ckpts=2))
randomness = dict(seed=0, deterministic=False)
