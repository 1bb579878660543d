# AdaptFormer-8 (parallel AdaptMLP, s = 0.1) on ViT-B/16 (ImageNet-21k), one FGVC dataset (the
# bottleneck of the VTAB-1k config; the SPT paper does not give the one of its 0.44% row).
# The task, its splits and its recipe (configs/fgvc/recipes.csv) are applied by
# tools/benchmarks/run_table.py.
_base_ = './vit-base-p16_in21k-pre_fgvc.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='AdaptFormer', r=8)))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook'),
                dict(type='EMAHook', momentum=2e-4, update_buffers=True, priority='ABOVE_NORMAL')]
