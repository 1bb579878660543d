# VTAB-1k, one task, in the layout of the NOAH / SPT preparation scripts:
#   <data_root>/<task>/images/{train800,val200,train800val200,test}/*.jpg
#   <data_root>/<task>/{train800,val200,train800val200,test}.txt   ("images/<split>/x.jpg label")
# read by mmpretrain's stock CustomDataset. (The mmssf configs use mmssf.VTAB1k: the same class
# plus checks of the task name, labels and files.) Default: train800val200 -> test of `task`.
dataset_type = 'CustomDataset'
data_root = 'data/vtab-1k/'
task = 'cifar'

# the ImageNet-21k ViT normalises to [-1, 1] (timm vit_base_patch16_224_in21k)
data_preprocessor = dict(num_classes=100, mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5],
                         to_rgb=True)
# "direct resize" (VTAB's default, SSF --direct-resize): every image to 224 x 224, bicubic
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=224, interpolation='bicubic', backend='pillow'),
    dict(type='PackInputs'),
]
# the recipe table's train_aug picks one (tools/benchmarks/run_table.py)
train_pipelines = dict(
    none=test_pipeline,  # SSF / SPT / NOAH: no augmentation
    flip=[  # RLRR simple_aug: + random horizontal flip
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=224, interpolation='bicubic', backend='pillow'),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='PackInputs'),
    ])

train_dataloader = dict(
    batch_size=32, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root + task, ann_file='train800val200.txt',
                 data_prefix='', pipeline=train_pipelines['none']))
test_dataloader = dict(
    batch_size=64, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root + task, ann_file='test.txt',
                 data_prefix='', pipeline=test_pipeline))
test_evaluator = dict(type='Accuracy', topk=(1, ))
# no validation loop: a run is scored once, after its last epoch (never its best test epoch)
val_dataloader = None
val_evaluator = None
