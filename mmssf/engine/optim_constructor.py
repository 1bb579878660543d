"""Optimizer constructor for tuned models: only trainable parameters, no decay on PEFT vectors."""
import logging

from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS

#: leaf-name prefixes of PEFT tensors that get no weight decay (scales, shifts, prompts, deltas)
NO_DECAY_PREFIXES = ('ssf_', 'vpt_', 'spt_delta', 'rlrr_')


class _DropFrozenWarnings(logging.Filter):
    def filter(self, record):
        return 'requires_grad=False' not in record.getMessage()


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PeftOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` for PEFT.

    * adds only parameters with ``requires_grad`` (frozen ones never reach the optimizer);
    * gives ``weight_decay=0`` to SSF scales / shifts, VPT prompts, RLRR factors and SPT sparse
      deltas (leaf names starting with :data:`NO_DECAY_PREFIXES`);
    * honours ``paramwise_cfg`` (``custom_keys``, ``bias_decay_mult``, ``norm_decay_mult`` ...)
      for everything else, e.g. necks and heads;
    * logs one summary line instead of one warning per frozen parameter.

    Use: ``optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor', ...)``.
    """

    def __call__(self, model):
        if not self.paramwise_cfg:
            self.paramwise_cfg = dict(custom_keys={})  # route through add_params
        return super().__call__(model)

    def add_params(self, params, module, prefix='', is_dcn_module=None):
        if prefix:  # only the top-level call is ours; recursion is the parent's
            return super().add_params(params, module, prefix, is_dcn_module)
        groups = []
        log_filter = _DropFrozenWarnings()
        logger = MMLogger.get_current_instance()
        logger.addFilter(log_filter)
        try:
            super().add_params(groups, module, prefix, is_dcn_module)
        finally:
            logger.removeFilter(log_filter)
        names = {id(p): n for n, p in module.named_parameters()}
        # (mmengine drops frozen parameters itself, so count them on the module)
        frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
        trainable = no_decay = 0
        for group in groups:
            param = group['params'][0]
            if not param.requires_grad:
                continue
            trainable += param.numel()
            leaf = names.get(id(param), '').rsplit('.', 1)[-1]
            if leaf.startswith(NO_DECAY_PREFIXES):
                group['weight_decay'] = 0.0
                no_decay += param.numel()
            params.append(group)
        print_log(f'mmssf optimizer: {trainable:,} trainable parameters ({no_decay:,} PEFT without '
                  f'weight decay), {frozen:,} frozen parameters left out', logger='current')
