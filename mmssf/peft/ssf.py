"""SSF: per-channel scale and shift after every operation (Lian et al., "Scaling & Shifting Your
Features: A New Baseline for Efficient Model Tuning", NeurIPS 2022).

``y = γ ⊙ x + β`` on the output of each target, γ ~ N(1, σ), β ~ N(0, σ). Merged by folding into
the producing op: a Linear / Conv gets ``W' = diag(γ) W, b' = γ ⊙ b + β``, a LayerNorm
``g' = γ ⊙ g, b' = γ ⊙ b + β``. A bias-free producer folds β into the additive term the target
table names as its sink (mmseg ViT: the position embedding); without one, the default placement
drops the shift and a user placement that asks for it makes merge refuse.
"""
import torch
from torch import nn

from ..registry import PEFT_METHODS
from .base import MergeError, PeftMethod, PeftUnit
from .card import MethodCard
from .functional import scale_shift
from .hooks import weight_and_bias_names
from .options import Option, OptionError


SSF_ROLES = ('patch_embed', 'patch_embed_norm', 'norm1', 'qkv', 'proj', 'norm2', 'fc1', 'fc2',
             'final_norm', 'out_norm')


def out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.MultiheadAttention):
        return 3 * module.embed_dim
    raise TypeError(f'SSF can follow a Linear, Conv2d, LayerNorm or nn.MultiheadAttention '
                    f'in-projection, not {type(module).__name__}')


class SSFUnit(PeftUnit):
    """Scale (and shift) the output of one module."""
    option_spec = dict(
        init_std=Option(0.02, float, min=0, doc='std of the N(1, σ) scale and N(0, σ) shift init'),
        shift=Option(True, bool, doc='learn the shift β as well as the scale γ'),
        fold_norms=Option(True, bool, doc='train the SSF after a LayerNorm as a '
                          're-parameterization of its affine (less memory, same function)'))
    prefixes = ('ssf_', )
    no_decay = ('ssf_', )

    def attach(self):
        module = self.module
        channels = out_channels(module)
        std = self.opts.init_std
        self.scale = self.add_parameter('ssf_scale', torch.empty(channels).normal_(1.0, std))
        self.sink = None
        use_shift = self.opts.shift
        if use_shift and not self.has_bias():
            self.sink = self.method.table.shift_sinks.get(self.name)
            if self.sink is None and self.from_default:
                use_shift = False  # nowhere to fold it: the default placement stays mergeable
        self.shift = (self.add_parameter('ssf_shift', torch.empty(channels).normal_(0.0, std))
                      if use_shift else None)
        if self.reparam or self.folds_into_norm():
            # Output not hookable (see hooks.py), or a LayerNorm: re-parameterize the producer
            # (= the merge rule). For a LayerNorm this is also the lean choice in training: its
            # backward already keeps its input, so scaling its affine parameters saves nothing
            # more, where an op on its output would keep that output too.
            self.add_weight_transform('ssf', weight_and_bias_names(module), self.fold)
        else:
            self.channel_dim = 1 if isinstance(module, nn.Conv2d) else -1
            self.handles.append(module.register_forward_hook(self.forward_hook))

    def folds_into_norm(self) -> bool:
        module = self.module
        return (isinstance(module, nn.LayerNorm) and module.weight is not None
                and (module.bias is not None or self.shift is None)
                and self.opts.fold_norms)

    def forward_hook(self, module, args, out):
        return scale_shift(out, self.scale, self.shift, self.channel_dim)

    def has_bias(self) -> bool:
        if isinstance(self.module, nn.LayerNorm):
            return self.module.bias is not None
        return getattr(self.module, weight_and_bias_names(self.module)[1]) is not None

    def fold(self, module, params):
        """Effective (weight, bias) of the producer with this SSF folded in."""
        w_name, b_name = weight_and_bias_names(module)
        weight, bias = params[w_name], params[b_name]
        view = (-1, ) + (1, ) * (weight.dim() - 1)
        out = {w_name: weight * self.scale.view(view)}
        if bias is not None:
            out[b_name] = bias * self.scale + (self.shift if self.shift is not None else 0)
        return out

    def merge_blocker(self):
        module = self.module
        if isinstance(module, nn.LayerNorm):
            if module.weight is None:
                return (f'SSF after {self.name}: LayerNorm without affine has no stock parameter to '
                        f'take the scale')
            if self.shift is not None and module.bias is None:
                return f'SSF shift after {self.name}: the LayerNorm has no bias to take it'
            return None
        if self.shift is not None and not self.has_bias() and self.sink is None:
            return (f'SSF shift after {self.name} cannot be merged: the producer has no bias and '
                    f'the stock model adds nothing after it to take the shift (set '
                    f'targets={{{self.name.rsplit(".", 1)[-1]!r}: dict(shift=False)}} or drop this '
                    f'target)')
        return None

    def merge(self):
        blocker = self.merge_blocker()
        if blocker:
            raise MergeError(blocker)
        module = self.module
        if isinstance(module, nn.LayerNorm):
            module.weight.mul_(self.scale)
            if self.shift is not None:
                module.bias.mul_(self.scale).add_(self.shift)
            return
        w_name, b_name = weight_and_bias_names(module)
        bias = getattr(module, b_name)
        folded = self.fold(module, {w_name: getattr(module, w_name), b_name: bias})
        for name, value in folded.items():
            getattr(module, name).copy_(value)
        if self.shift is not None and bias is None:
            param_name, first_token = self.sink
            sink = dict(self.backbone.named_parameters())[param_name]
            sink[:, first_token:].add_(self.shift)


@PEFT_METHODS.register_module()
class SSF(PeftMethod):
    """Scale-and-shift features.

    Args:
        targets: roles / patterns; default: patch embed (+ its norm), and in every block norm1,
            qkv, proj, norm2, fc1, fc2; the final / output norms.
        patch_merging (bool): also after each Swin patch-merging norm (role ``merge_norm``): the
            official code's intent, not in the published counts. Default False.

    ``fold_norms``: the norm's own affine parameters are re-parameterized (same function, less
    activation memory: nothing extra is kept for backward); False applies the SSF to the norm's
    output instead.
    """
    unit_cls = SSFUnit
    default_targets = SSF_ROLES
    card = MethodCard(zoo='ssf', folder='ssf', suites=('vtab1k', 'fgvc'), label='SSF',
                      count='SSF paper (Lian et al. 2022), Tables 1 / 5: ViT-B/16 + 100-class head '
                            '282,724; Swin-B 369,764')

    def __init__(self, targets=None, patch_merging=False, **options):
        if not isinstance(patch_merging, bool):
            raise OptionError(f'SSF: option patch_merging={patch_merging!r} must be a bool')
        super().__init__(targets=targets, **options)
        self.patch_merging = patch_merging
        if patch_merging:
            self.default_targets = SSF_ROLES + ('merge_norm', )

    def target_specs(self):
        if self.patch_merging:
            check_patch_merging(self, 'merge_norm')
        return super().target_specs()


def check_patch_merging(method: PeftMethod, role: str) -> None:
    """``patch_merging=True`` adds ``role`` to the default targets (on a backbone without patch
    merging, none); with explicit targets it would do nothing, so it is refused there."""
    if method.targets is not None:
        raise OptionError(f'{type(method).__name__}: patch_merging=True adds {role!r} to the '
                          f'default targets; with explicit targets, list {role!r} among them '
                          f'instead')
