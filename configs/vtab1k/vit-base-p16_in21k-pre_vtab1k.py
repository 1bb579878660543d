# One VTAB-1k task on ViT-B/16 pre-trained on ImageNet-21k: a *stock* mmpretrain config (no
# mmssf). The method configs beside it inherit it and add a few lines; merged checkpoints are
# evaluated with it. tools/benchmarks/run_table.py sets the task, the splits and the per-task
# recipe of configs/vtab1k/recipes.csv (lr, weight decay, drop-path, epochs, batch, warm-up,
# optimizer, augmentation) in a run config it writes beside the run. Shared here, as in the
# official SSF / SPT / RLRR code: AdamW, no decay on biases / norms / position embedding /
# cls token, linear warm-up then cosine decay to 1e-8, direct resize to 224, plain cross-entropy
# (--smoothing 0, no mixup). Defaults: task cifar with SSF's row (5e-3, wd 5e-5, 2 x 32 images).
_base_ = [
    'mmpretrain::_base_/models/vit-base-p16.py',
    '../_base_/datasets/vtab1k.py',
    'mmpretrain::_base_/default_runtime.py',
]

# backbone-level mmpretrain keys, written from the ImageNet-21k timm / Google ViT-B/16 by
#   python tools/model_converters/vit_timm_to_mm.py SRC pretrain/vit-base-p16_in21k_mmpretrain.pth \
#       --target mmpretrain
pretrained = 'pretrain/vit-base-p16_in21k_mmpretrain.pth'
model = dict(
    backbone=dict(drop_rate=0.0, drop_path_rate=0.0,
                  init_cfg=dict(_delete_=True, type='Pretrained', checkpoint=pretrained)),
    head=dict(num_classes=100, topk=(1, ),
              loss=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0)))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-3, weight_decay=5e-5, eps=1e-8, betas=(0.9, 0.999)),
    # as timm: no decay on biases, norms, 1-d parameters, position embedding and cls token
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0,
                       custom_keys={'.pos_embed': dict(decay_mult=0.0),
                                    '.cls_token': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-8, by_epoch=True, begin=10, end=100,
         convert_to_iter_based=True),
]
train_dataloader = dict(batch_size=64)
train_cfg = dict(by_epoch=True, max_epochs=100)
val_cfg = None
test_cfg = dict()
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=10, max_keep_ckpts=2))
randomness = dict(seed=42)
auto_scale_lr = dict(base_batch_size=64)
