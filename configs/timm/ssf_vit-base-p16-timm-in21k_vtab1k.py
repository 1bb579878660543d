# SSF on timm's ViT-B/16 ImageNet-21k (mmpretrain.TIMMBackbone), one VTAB-1k task; the task, its
# splits and its recipe (../vtab1k/recipes.csv) are applied by tools/benchmarks/run_table.py:
#   python tools/benchmarks/run_table.py --suite vtab1k --method ssf --data-root data/vtab-1k \
#       --config configs/timm/ssf_vit-base-p16-timm-in21k_vtab1k.py \
#       --cfg-options model.backbone.checkpoint_path=/path/to/vit_base_patch16_224.augreg_in21k.npz
# (merged checkpoints are evaluated with ./vit-base-p16-timm-in21k_vtab1k.py, found by name).
# Another method: its --method and its PEFT dict, e.g. ``--method lora --cfg-options
# model.backbone.peft.type=LoRA model.backbone.peft.r=8 model.backbone.peft.targets=[qkv]``
# (the method's options as in configs/vtab1k/<method>_vit-base-p16_in21k-pre_vtab1k.py).
_base_ = './vit-base-p16-timm-in21k_vtab1k.py'

model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='TIMMBackbone',
                           peft=dict(type='SSF')))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
vtab1k = dict(type='mmssf.VTAB1k')  # the stock CustomDataset + checks of labels, files
train_dataloader = dict(dataset=vtab1k)
test_dataloader = dict(dataset=vtab1k)
