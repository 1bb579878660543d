# SNELL-32 (every block Linear, separate q / k / v updates; the official Dropout(0.1) on the update
# inputs except proj and DropPath(0.1) on the update outputs; the class token trained, as the
# official code) on ViT-B/16 (ImageNet-21k), one FGVC dataset: the official FGVC scripts of
# SNELL-32 (ssfgunner/SNELL scripts/fgvc/snell32/, --low_rank_dim 32; the repository also has
# snell8 / snell16 scripts) and the SNELL-32 row of the paper's Table 1. The sparsity ratio is the
# dataset's (--init_thres of its script): the peft_options column of configs/fgvc/recipes.csv.
# The task, its splits and its recipe (configs/fgvc/recipes.csv) are applied by
# tools/benchmarks/run_table.py.
_base_ = './vit-base-p16_in21k-pre_fgvc.py'
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='SNELL', r=32, sparsity=0.9, drop_path=0.1,
                                     targets=dict(qkv=dict(dropout=0.1), proj=None,
                                                  fc1=dict(dropout=0.1), fc2=dict(dropout=0.1)))))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
