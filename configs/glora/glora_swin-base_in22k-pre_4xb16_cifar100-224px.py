# GLoRA (r=4, per-layer supports searched under a 0.3M limit) on Swin-B
# (ImageNet-22k), CIFAR-100 at 224 px (100-class head trained). The supports come from
# tools/analysis_tools/glora_search.py run on this config (supernet training with this recipe,
# then the evolutionary search on val), which writes the file below; this config then trains
# that fixed support (mergeable: X_merged.pth).
# Optimizer of the official supernet recipe (Arnav0400/ViT-Slim GLoRA/supernet.py: AdamW lr 1e-4,
# weight decay 1e-4, batch 64, 10 warm-up epochs from 1e-6, cosine to 1e-5, drop-path 0.1); 100
# epochs (the official 500 are for the 1k-image VTAB-1k tasks) and the base config's
# augmentation: our choice.
# Swin is beyond the official (ViT-only) code: every qkv / proj / fc1 / fc2 Linear is tuned.
_base_ = '../_base_/swin-base_in22k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
support = ('work_dirs/glora_supports/'
           'glora_swin-base_in22k-pre_4xb16_cifar100-224px/glora_support.json')
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           drop_path_rate=0.1, peft=dict(type='GLoRA', support=support)))
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor',
                     optimizer=dict(lr=1e-4, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, end=10, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, begin=10, end=100, convert_to_iter_based=True)]
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
auto_scale_lr = dict(base_batch_size=64)
