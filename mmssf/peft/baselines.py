"""The papers' baselines in the same contract: BitFit, linear probing, full fine-tuning."""
from torch import nn

from ..registry import PEFT_METHODS
from .base import PeftMethod
from .card import MethodCard

_BIAS_NAMES = ('bias', 'in_proj_bias')


@PEFT_METHODS.register_module()
class BitFit(PeftMethod):
    """Tune every bias of the backbone (Linear, Conv and LayerNorm biases, fused in-proj bias).

    The tuned model *is* the stock model, so merge is the identity. Takes no options.
    """
    accepts_targets = False
    card = MethodCard(zoo='bitfit', folder='bitfit', suites=('vtab1k', 'fgvc'), label='BitFit',
                      count='every bias of the backbone (Zaken et al. 2022)')

    def trainable_names(self, backbone: nn.Module):
        return [n for n, _ in backbone.named_parameters() if n.rsplit('.', 1)[-1] in _BIAS_NAMES]


@PEFT_METHODS.register_module(name=['Linear', 'LinearProbe'])
class LinearProbe(PeftMethod):
    """Freeze the whole backbone (only the neck / head outside it train). Merge is the identity.

    Config type: ``'Linear'`` or ``'LinearProbe'``. Takes no options.
    """
    accepts_targets = False
    card = MethodCard(zoo='linear', folder='linear', suites=('vtab1k', 'fgvc'),
                      label='Linear probe',
                      count='0 in the backbone (the head only)')


@PEFT_METHODS.register_module(name=['Full', 'FullFineTune'])
class FullFineTune(PeftMethod):
    """Train every backbone parameter. Merge is the identity.

    Config type: ``'Full'`` or ``'FullFineTune'``. Takes no options.
    """
    accepts_targets = False
    card = MethodCard(zoo='full', folder='full', suites=('vtab1k', 'fgvc'),
                      label='Full fine-tuning',
                      count='every backbone parameter')

    def trainable_names(self, backbone: nn.Module):
        return [n for n, _ in backbone.named_parameters()]
