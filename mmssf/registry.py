"""mmssf registries: children of mmengine's roots (scope ``mmssf``) plus PEFT_METHODS.

Configs name mmssf components with the scope prefix (``type='mmssf.PeftBackbone'``) so they
resolve from mmdet / mmseg / mmpretrain configs whose ``default_scope`` is another package.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmssf', locations=['mmssf.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mmssf',
                    locations=['mmssf.datasets'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmssf', locations=['mmssf.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope='mmssf',
    locations=['mmssf.engine'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope='mmssf',
                          locations=['mmssf.engine'])
# Tuning methods (SSF, VPT, LoRA, ...): built from ``peft=dict(type='SSF', ...)`` configs.
PEFT_METHODS = Registry('peft method', scope='mmssf', locations=['mmssf.peft'])
