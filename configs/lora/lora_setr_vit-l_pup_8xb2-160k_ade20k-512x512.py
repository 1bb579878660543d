# LoRA (r=16 on qkv: the SPT paper's LoRA-16, its 14.7M trainable) on SETR-PUP, ViT-L
# (ImageNet-21k), ADE20K 160k; decode and auxiliary heads fully trained, as the SPT paper.
# Stock schedule and optimizer (the papers follow the stock dense-task settings).
_base_ = 'mmseg::setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)

pretrained = 'pretrain/vit-large-p16_in21k_mmseg.pth'  # mmseg keys, no prefix
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained),
                           peft=dict(type='LoRA', r=16, targets=['qkv'])))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
