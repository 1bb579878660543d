# SSF (Lian et al. NeurIPS 2022) on timm's ViT-B/16 ImageNet-21k through mmpretrain.TIMMBackbone,
# CIFAR-100 at 224 px: the SSF paper's own setting on its own model code (the official SSF code
# tunes timm's vit_base_patch16_224_in21k). 282,724 trainable parameters (SSF 205,824 + head
# 76,900), the official count. lr 1e-3, 4 GPUs x 64 images: the official
# train_scripts/vit/cifar_100/train_ssf.sh.
# The ImageNet-21k weights come from a local file:
#   --cfg-options model.backbone.checkpoint_path=/path/to/vit_base_patch16_224.augreg_in21k.npz
_base_ = './vit-base-p16-timm-in21k_cifar100-224px.py'

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='TIMMBackbone',
                           peft=dict(type='SSF')))
train_dataloader = dict(batch_size=64)
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor', optimizer=dict(lr=1e-3))
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
auto_scale_lr = dict(base_batch_size=256)
