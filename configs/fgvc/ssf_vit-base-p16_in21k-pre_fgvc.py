# SSF (Lian et al. NeurIPS 2022) on ViT-B/16 (ImageNet-21k), one FGVC dataset.
# The task, its splits and its recipe (configs/fgvc/recipes.csv) are applied by
# tools/benchmarks/run_table.py.
_base_ = './vit-base-p16_in21k-pre_fgvc.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='SSF')))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook'),
                dict(type='EMAHook', momentum=2e-4, update_buffers=True, priority='ABOVE_NORMAL')]
