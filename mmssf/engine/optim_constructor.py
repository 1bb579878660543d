"""Optimizer constructor for tuned models: only trainable parameters, no decay on PEFT vectors."""
import logging

from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..peft.model_merge import tuned_submodules
from ..registry import OPTIM_WRAPPER_CONSTRUCTORS


def no_weight_decay(model) -> set:
    """Full names of the PEFT tensors of ``model`` that get no weight decay, as each method's
    units declare them (``no_decay`` prefixes: SSF scales / shifts, VPT prompts, RLRR factors, SPT
    sparse deltas ...)."""
    names = set()
    for prefix, _, method in tuned_submodules(model):
        dot = prefix + '.' if prefix else ''
        names.update(dot + n for n in method.no_weight_decay())
    return names


class _DropFrozenWarnings(logging.Filter):
    def filter(self, record):
        return 'requires_grad=False' not in record.getMessage()


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PeftOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` for PEFT.

    * adds only parameters with ``requires_grad`` (frozen ones never reach the optimizer);
    * gives ``weight_decay=0`` to the PEFT tensors each method declares decay-free (SSF scales /
      shifts, VPT prompts, RLRR factors, SPT sparse deltas ...; :func:`no_weight_decay`);
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
        decay_free = no_weight_decay(module)
        # (mmengine drops frozen parameters itself, so count them on the module)
        frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
        trainable = no_decay = 0
        for group in groups:
            param = group['params'][0]
            if not param.requires_grad:
                continue
            trainable += param.numel()
            if names.get(id(param)) in decay_free:
                group['weight_decay'] = 0.0
                no_decay += param.numel()
            params.append(group)
        print_log(f'mmssf optimizer: {trainable:,} trainable parameters ({no_decay:,} PEFT without '
                  f'weight decay), {frozen:,} frozen parameters left out', logger='current')
