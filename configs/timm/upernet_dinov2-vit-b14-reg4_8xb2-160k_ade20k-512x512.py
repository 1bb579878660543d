# UperNet on DINOv2 ViT-B/14 with 4 registers (timm vit_base_patch14_reg4_dinov2.lvd142m) through
# mmseg's TIMMBackbone, ADE20K 160k: a *stock* mmseg config (no mmssf) — mmseg's ViT-B UperNet
# (MultiLevelNeck scales 4, 2, 1, 0.5; UperHead; FCN auxiliary head; AdamW 6e-5, poly 160k) with
# the DINOv2 backbone in place of mmseg's ViT. timm's features_only wraps the ViT in a
# FeatureGetterNet: maps (B, 768, H/14, W/14) after blocks 3, 5, 7, 11 (the usual 4 levels of a
# 12-block ViT); dynamic_img_size / dynamic_img_pad let the 518-px DINOv2 run on 512 crops and on
# slide windows of any size (the position embedding is resampled, the input padded to 14).
# Merged checkpoints (X_merged.pth of the LoRA config) are evaluated with this config.
# Weights from a local file, loaded by timm's pretrained path (its filter converts the layouts):
# the timm file (model.safetensors of timm/vit_base_patch14_reg4_dinov2.lvd142m) or the official
# DINOv2 one (dinov2_vitb14_reg4_pretrain.pth):
#   --cfg-options model.backbone.pretrained_cfg_overlay.file=/path/to/file
_base_ = 'mmseg::vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py'

checkpoint = 'pretrain/vit_base_patch14_reg4_dinov2.lvd142m.safetensors'
model = dict(
    pretrained=None,
    backbone=dict(_delete_=True, type='TIMMBackbone',
                  model_name='vit_base_patch14_reg4_dinov2.lvd142m', features_only=True,
                  out_indices=(3, 5, 7, 11), pretrained=True,
                  pretrained_cfg_overlay=dict(file=checkpoint), dynamic_img_size=True,
                  dynamic_img_pad=True, drop_path_rate=0.0))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'reg_token': dict(decay_mult=0.)}))
