# SPT-Adapter (He et al. ICCV 2023) on ViT-B/16 (ImageNet-21k), one VTAB-1k task.
# The task, its splits and its recipe (configs/vtab1k/recipes.csv) are applied by
# tools/benchmarks/run_table.py.
_base_ = './vit-base-p16_in21k-pre_vtab1k.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
# an allocation per task: run_table.py runs spt_sensitivity.py and sets it
spt_allocation = ('work_dirs/spt_allocations/'
                  'spt-adapter_vit-base-p16_in21k-pre_vtab1k/allocation.json')
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='SPTAdapter', allocation=spt_allocation)))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
vtab1k = dict(type='mmssf.VTAB1k')  # the stock CustomDataset + checks of labels, files
train_dataloader = dict(dataset=vtab1k)
test_dataloader = dict(dataset=vtab1k)
