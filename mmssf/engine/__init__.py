from .amp import AmpOptimWrapper, use_amp
from .atomic_checkpoint import AtomicCheckpointHook, use_atomic_checkpoints
from .checkpoint_check import CheckpointCheckHook, CheckpointMismatchError, StockCheckpointError
from .optim_constructor import PeftOptimWrapperConstructor
from .reparam_hook import ReparamCheckpointHook
from .report_hook import TrainableParamsReportHook, trainable_report

__all__ = ['AmpOptimWrapper', 'AtomicCheckpointHook', 'CheckpointCheckHook',
           'CheckpointMismatchError', 'PeftOptimWrapperConstructor', 'ReparamCheckpointHook',
           'StockCheckpointError', 'TrainableParamsReportHook', 'trainable_report', 'use_amp',
           'use_atomic_checkpoints']
