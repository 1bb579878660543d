# CIFAR-100 at 224 px on timm's ViT-B/16 pre-trained on ImageNet-21k
# (``vit_base_patch16_224.augreg_in21k``) inside mmpretrain's TIMMBackbone: the *stock* model of
# the timm configs here (no PEFT; mmssf only for the TimmViTPool neck). The recipe, data and
# schedule are those of ../_base_/vit-base-p16_in21k-pre_cifar100-224px.py (the SSF paper's
# CIFAR-100 setting). Weights from a local file, never a hub:
#   checkpoint_path: a timm .pth / .safetensors (e.g. the model.safetensors of
#   timm/vit_base_patch16_224.augreg_in21k) or Google's .npz (augreg ..._in21k .npz); timm loads
#   it, classifier included (21,843 classes), then TIMMBackbone removes the classifier.
_base_ = '../_base_/vit-base-p16_in21k-pre_cifar100-224px.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

checkpoint = 'pretrain/vit_base_patch16_224.augreg_in21k.safetensors'
model = dict(
    backbone=dict(_delete_=True, type='TIMMBackbone',
                  model_name='vit_base_patch16_224.augreg_in21k', checkpoint_path=checkpoint,
                  drop_rate=0.0, drop_path_rate=0.0),
    # TIMMBackbone returns all tokens after the final norm; pool the class token as timm's head
    neck=dict(_delete_=True, type='mmssf.TimmViTPool', pool='token'),
    # (the base's loss, label smoothing 0.1; no pre-logits layer: 76,900 parameters)
    head=dict(type='LinearClsHead', num_classes=100, in_channels=768))
