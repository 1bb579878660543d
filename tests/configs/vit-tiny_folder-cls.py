# Stock mmpretrain ViT classifier with tiny dims on a generated class-per-folder dataset.
_base_ = 'mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k.py'
data_root = 'data/test_folder/'
classes = ('red_square', 'green_disc', 'blue_bar')  # mmssf.datasets.image_folder.FOLDER_CLASSES
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
                  img_size=64, init_cfg=None, drop_rate=0.0),
    head=dict(in_channels=32, num_classes=len(classes), topk=(1, )),
    train_cfg=None)
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
dataset = dict(_delete_=True, type='CustomDataset', data_root=data_root, with_label=True,
               classes=classes, pipeline=pipeline)
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(dataset, data_prefix='train'))
val_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                      dataset=dict(dataset, data_prefix='val'))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=2, val_interval=2)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True)]
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=None)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
randomness = dict(seed=0, deterministic=True)
