# LoRA (r=8 on the fused qkv of every block) on UperNet, DINOv2 ViT-B/14 with registers
# (mmseg's TIMMBackbone around timm's vit_base_patch14_reg4_dinov2.lvd142m), ADE20K 160k; the
# neck, decode and auxiliary heads trained. Stock schedule and optimizer of the base.
# Weights: --cfg-options model.backbone.pretrained_cfg_overlay.file=/path/to/file (see the base).
_base_ = './upernet_dinov2-vit-b14-reg4_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='TIMMBackbone',
                           peft=dict(type='LoRA', r=8, targets=['qkv'])))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
