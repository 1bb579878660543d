# AdaptFormer-8 (parallel AdaptMLP, s = 0.1) on ViT-B/16 (ImageNet-21k), one VTAB-1k task: the
# bottleneck of the AdaptFormer row that the VTAB-1k tables report (0.16M; RLRR Table 2) and of
# visinf/adapter_plus's VTAB-1k AdaptFormer config.
# The task, its splits and its recipe (configs/vtab1k/recipes.csv) are applied by
# tools/benchmarks/run_table.py.
_base_ = './vit-base-p16_in21k-pre_vtab1k.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='AdaptFormer', r=8)))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
vtab1k = dict(type='mmssf.VTAB1k')  # the stock CustomDataset + checks of labels, files
train_dataloader = dict(dataset=vtab1k)
test_dataloader = dict(dataset=vtab1k)
