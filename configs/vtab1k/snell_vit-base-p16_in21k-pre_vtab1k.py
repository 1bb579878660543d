# SNELL-32 (every block Linear, separate q / k / v updates; the official Dropout(0.1) on the update
# inputs except proj and DropPath(0.1) on the update outputs; the class token trained, as the
# official code) on ViT-B/16 (ImageNet-21k), one VTAB-1k task: the rank of the official VTAB-1k
# scripts (ssfgunner/SNELL scripts/vtab/snell32/, --low_rank_dim 32) and of the SNELL-32 row of
# the paper's Table 1. The sparsity ratio is the task's (--init_thres of its script): the
# peft_options column of configs/vtab1k/recipes.csv; 0.9 here is only the default.
# The task, its splits and its recipe (configs/vtab1k/recipes.csv) are applied by
# tools/benchmarks/run_table.py.
_base_ = './vit-base-p16_in21k-pre_vtab1k.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='SNELL', r=32, sparsity=0.9, drop_path=0.1,
                                     targets=dict(qkv=dict(dropout=0.1), proj=None,
                                                  fc1=dict(dropout=0.1), fc2=dict(dropout=0.1)))))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
vtab1k = dict(type='mmssf.VTAB1k')  # the stock CustomDataset + checks of labels, files
train_dataloader = dict(dataset=vtab1k)
test_dataloader = dict(dataset=vtab1k)
