# FacT-TK (r=32, s=0.1) on Swin-B (ImageNet-22k), CIFAR-100 at 224 px (100-class head trained).
# Tucker factorisation: shared U, V, one d x d x d core C and d x slots P (144 on ViT-B).
# Optimizer and schedule of the official recipe (JieShibo/PETL-ViT FacT/fact_tk.py: AdamW lr 1e-3,
# weight decay 1e-4, batch 64, 100 epochs, 10 warm-up epochs from 1e-6, cosine to 1e-5, ViT
# drop-path 0.1; rank / scale of FacT/configs/tk/cifar.yaml, its VTAB-1k CIFAR-100 task).
# Swin is beyond the official (ViT-only) code: one U, V (and TK core) per stage width; the
# recipe is the official ViT one (our choice). Mergeable.
_base_ = '../_base_/swin-base_in22k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                           drop_path_rate=0.1,
                           peft=dict(type='FacTTK', r=32, scale=0.1)))
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor',
                     optimizer=dict(lr=1e-3, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, end=10, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, begin=10, end=100, convert_to_iter_based=True)]
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
auto_scale_lr = dict(base_batch_size=64)
