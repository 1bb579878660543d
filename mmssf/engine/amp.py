"""Mixed precision on every device torch autocasts: mmengine's ``AmpOptimWrapper``, also on CPU.

mmengine 0.10's ``AmpOptimWrapper`` asserts an accelerator, and its ``autocast`` allows only
bfloat16 on CPU. torch's CPU autocast runs bfloat16 and float16, and ``torch.amp.GradScaler``
scales losses on CPU, so ``tools/train.py --amp`` (which selects :class:`AmpOptimWrapper`) trains
on a machine without a GPU the way it will on one: same optimizer wrapper, same loss scaling.
"""
from contextlib import contextmanager
from typing import Optional, Union

import torch
from mmengine.device import get_device
from mmengine.optim import AmpOptimWrapper as MMEngineAmpOptimWrapper
from mmengine.optim import OptimWrapper

from ..registry import OPTIM_WRAPPERS

AMP_DTYPES = ('float16', 'bfloat16')


@OPTIM_WRAPPERS.register_module()
class AmpOptimWrapper(MMEngineAmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` (unchanged on CUDA / NPU / MLU / MUSA); on CPU:
    ``torch.autocast('cpu', dtype)`` with ``dtype`` bfloat16 (default) or float16, and the same
    ``loss_scale`` choices through ``torch.amp.GradScaler('cpu')``.

    ``device`` (default: mmengine's ``get_device()``, where the Runner puts the model) is for
    driving a model on the CPU of a GPU machine.

    Use: ``optim_wrapper = dict(type='mmssf.AmpOptimWrapper', dtype='bfloat16', ...)`` or
    ``tools/train.py --amp [--amp-dtype float16|bfloat16]``.
    """

    def __init__(self, loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Optional[Union[str, torch.dtype]] = None, use_fsdp: bool = False,
                 device: Optional[str] = None, **kwargs):
        self.device_type = device or get_device()
        if self.device_type != 'cpu':
            super().__init__(loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp, **kwargs)
            return
        if use_fsdp:
            raise ValueError('mmssf.AmpOptimWrapper: use_fsdp=True needs a GPU (FSDP), not CPU')
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        if loss_scale == 'dynamic':
            scaler_kwargs = {}
        elif isinstance(loss_scale, float):
            self._scale_update_param = loss_scale
            scaler_kwargs = dict(init_scale=loss_scale)
        elif isinstance(loss_scale, dict):
            scaler_kwargs = dict(loss_scale)
        else:
            raise TypeError(f'mmssf.AmpOptimWrapper: loss_scale must be "dynamic", a float or a '
                            f'dict of GradScaler arguments, got {loss_scale!r}')
        self.loss_scaler = torch.amp.GradScaler('cpu', **scaler_kwargs)
        if dtype is None:
            dtype = 'bfloat16'
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).replace('torch.', '')
        if dtype not in AMP_DTYPES:
            raise ValueError(f'mmssf.AmpOptimWrapper: dtype={dtype!r} cannot autocast on CPU; '
                             f'choose one of {", ".join(AMP_DTYPES)}')
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        if self.device_type != 'cpu':
            with super().optim_context(model):
                yield
            return
        with OptimWrapper.optim_context(self, model), \
                torch.autocast('cpu', dtype=self.cast_dtype):
            yield


def use_amp(cfg, dtype: Optional[str] = None) -> None:
    """What ``tools/train.py --amp`` does to a config: train through :class:`AmpOptimWrapper`
    (dynamic loss scaling unless the config sets one; ``dtype`` None: float16 on CUDA as mmengine,
    bfloat16 on CPU)."""
    if dtype is not None and dtype not in AMP_DTYPES:
        raise ValueError(f'--amp-dtype {dtype!r}: choose one of {", ".join(AMP_DTYPES)}')
    wrapper = cfg['optim_wrapper']
    if wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper',
                                                   'mmssf.AmpOptimWrapper'):
        raise ValueError(f'--amp: the config trains through optim_wrapper type '
                         f'{wrapper["type"]!r}; --amp replaces only OptimWrapper / AmpOptimWrapper')
    wrapper['type'] = 'mmssf.AmpOptimWrapper'
    wrapper.setdefault('loss_scale', 'dynamic')
    if dtype is not None:
        wrapper['dtype'] = dtype
