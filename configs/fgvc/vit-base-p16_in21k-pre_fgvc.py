# One FGVC dataset on ViT-B/16 pre-trained on ImageNet-21k: the stock mmpretrain model (the
# dataset reader is mmssf.FGVC: mmpretrain has none for VPT's json splits). The method configs
# beside it inherit it and add a few lines; merged checkpoints are evaluated with it.
# tools/benchmarks/run_table.py sets the dataset, the splits and the per-dataset recipe of
# configs/fgvc/recipes.csv (lr, weight decay, drop-path, epochs, batch, warm-up, optimizer,
# augmentation, weight EMA) in a run config it writes beside the run. Shared here: AdamW, no
# decay on biases / norms / position embedding / cls token, linear warm-up then cosine decay to
# 1e-8, plain cross-entropy. Defaults: CUB-200-2011 with SSF's row (1e-2, wd 5e-2, 2 x 32
# images, RandomResizedCrop + flip, EMA 0.9998).
_base_ = [
    'mmpretrain::_base_/models/vit-base-p16.py',
    '../_base_/datasets/fgvc.py',
    'mmpretrain::_base_/default_runtime.py',
]

pretrained = 'pretrain/vit-base-p16_in21k_mmpretrain.pth'
model = dict(
    backbone=dict(drop_rate=0.0, drop_path_rate=0.0,
                  init_cfg=dict(_delete_=True, type='Pretrained', checkpoint=pretrained)),
    head=dict(num_classes=200, topk=(1, ),
              loss=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0)))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-2, weight_decay=5e-2, eps=1e-8, betas=(0.9, 0.999)),
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
# timm ModelEmaV2 of the SSF scripts: ema = 0.9998 * ema + 0.0002 * model after every step
custom_hooks = [dict(type='EMAHook', momentum=2e-4, update_buffers=True, priority='ABOVE_NORMAL')]
randomness = dict(seed=42)
auto_scale_lr = dict(base_batch_size=64)
