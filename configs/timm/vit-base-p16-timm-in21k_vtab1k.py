# One VTAB-1k task on timm's ViT-B/16 ImageNet-21k (vit_base_patch16_224.augreg_in21k) inside
# mmpretrain's TIMMBackbone: the stock config of ../vtab1k/vit-base-p16_in21k-pre_vtab1k.py with
# the timm backbone (the official SSF / SPT / RLRR / SNELL / VPT code tunes this timm model) and
# the TimmViTPool neck (class token after the final norm, as timm's head). Everything else — the
# data, the recipe columns that tools/benchmarks/run_table.py applies per task (lr, weight decay,
# drop-path, epochs, batch, warm-up), the schedule — is the mmpretrain suite's.
# Weights from a local timm file (.pth / .safetensors, or Google's .npz):
#   --cfg-options model.backbone.checkpoint_path=/path/to/vit_base_patch16_224.augreg_in21k.npz
_base_ = '../vtab1k/vit-base-p16_in21k-pre_vtab1k.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

checkpoint = 'pretrain/vit_base_patch16_224.augreg_in21k.safetensors'
model = dict(
    backbone=dict(_delete_=True, type='TIMMBackbone',
                  model_name='vit_base_patch16_224.augreg_in21k', checkpoint_path=checkpoint,
                  drop_rate=0.0, drop_path_rate=0.0),
    neck=dict(_delete_=True, type='mmssf.TimmViTPool', pool='token'),
    head=dict(type='LinearClsHead', in_channels=768))
