# FGVC, one dataset, with VPT's splits: <data_root>/{train,val,test}.json map image paths (below
# images/, Images/ or the root, per dataset) to class ids; read by mmssf.FGVC (mmpretrain has no
# reader for this format). Default: trainval (= train + val) -> test of CUB-200-2011.
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
dataset_type = 'mmssf.FGVC'
data_root = 'data/fgvc/CUB_200_2011'
dataset = 'cub'

data_preprocessor = dict(num_classes=200, mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5],
                         to_rgb=True)
# test: resize the short side to 256, centre crop 224 (timm eval at crop_pct 0.875; VPT)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', interpolation='bicubic', backend='pillow'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
# the recipe table's train_aug picks one (tools/benchmarks/run_table.py)
train_pipelines = dict(
    rrc_flip=[  # SSF --simple-aug: RandomResizedCrop 224 + flip
        dict(type='LoadImageFromFile'),
        dict(type='RandomResizedCrop', scale=224, interpolation='bicubic', backend='pillow'),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='PackInputs'),
    ],
    resize_crop_flip=[  # VPT / RLRR: resize 256, random crop 224, flip
        dict(type='LoadImageFromFile'),
        dict(type='ResizeEdge', scale=256, edge='short', interpolation='bilinear',
             backend='pillow'),
        dict(type='RandomCrop', crop_size=224),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='PackInputs'),
    ])

train_dataloader = dict(
    batch_size=32, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, dataset=dataset, split='trainval',
                 pipeline=train_pipelines['rrc_flip']))
test_dataloader = dict(
    batch_size=64, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, dataset=dataset, split='test',
                 pipeline=test_pipeline))
test_evaluator = dict(type='Accuracy', topk=(1, ))
# no validation loop: a run is scored once, after its last epoch (never its best test epoch)
val_dataloader = None
val_evaluator = None
