"""RLRR: residual low-rank rescaling (Dong et al., "Low-Rank Rescaled Vision Transformer
Fine-Tuning: A Residual Design Approach", CVPR 2024).

Per Linear: ``W' = W + (s_left s_rightᵀ) ⊙ W``, ``b' = b + f``; SSF on the norms (and on ViT the
patch embedding). Exactly mergeable (Eq. 20) wherever the module has a bias to take ``f``.

Fidelity to the official code (zstarN70/RLRR):

* ViT has *separate* q / k / v Linears there, so a fused qkv gets one ``s_left`` of 3·dim and
  **three** ``s_right`` (one per q / k / v row block): ``qkv_blocks=None`` (default) does this on
  ViT and keeps one ``s_right`` on Swin, whose official code keeps the fused qkv.
* Positions: ViT — qkv, proj, fc1, fc2, SSF after norm1 / norm2 / the final norm and the patch
  embedding (ViT-B/16 + 100-class head: 365,668 trainable). Swin — qkv, proj, fc1, fc2, SSF after
  norm1 / norm2 / the output norm, **no** SSF after the patch embedding; the official code also
  tunes the patch-merging ``reduction`` (``patch_merging=True``; Swin-B + head: 460,644). That
  Linear has no bias, so its shift ``f`` has no stock parameter: such a placement trains, but
  merged checkpoints are refused at build time (set ``shift=False`` there to keep it mergeable).
* Init: the official draws ``s_left`` kaiming-uniform on a fan-in of 1 (U(±√6)) and ``s_right``
  U(±√(6/in)), so training starts far from the pretrained model (``init='official'``). The
  default ``init='residual'`` starts at the pretrained function: ``s_left = 0``, ``s_right = 1``
  (like LoRA's B = 0) while every factor still gets a gradient after the first step.

Memory: on a plain ``nn.Linear`` the tuned Linear runs as one
:func:`~mmssf.peft.functional.rebuilt_linear` (its forward is replaced; class, parameters and
hooks stay): it keeps only its input ``x`` and the scales for backward and rebuilds ``W'`` there,
where applying ``W'`` as a re-parameterized weight would keep ``W'`` and ``s_l s_rᵀ ⊙ W`` (two
``out × in`` copies per Linear, more than full fine-tuning keeps). Where the output cannot be
hooked (mmseg's ``nn.MultiheadAttention``) the weight is re-parameterized as before.
"""
import math

import torch
from torch import nn

from ..registry import PEFT_METHODS
from .base import PeftMethod, PeftUnit
from .card import MethodCard
from .functional import rebuilt_linear
from .hooks import is_plain_linear, replace_forward, weight_and_bias_names
from .delta_weight import in_out_features
from .options import Option, OptionError
from .ssf import SSFUnit, check_patch_merging


class RLRRUnit(PeftUnit):
    """Residual rescaling of one Linear (or fused in-projection)."""
    option_spec = dict(
        init=Option('residual', str, choices=('residual', 'official'),
                    doc="'residual': s_left = 0, s_right = 1 (starts at the pretrained model); "
                        "'official': kaiming-uniform on both scales as the official code"),
        left_std=Option(0.0, float, min=0, doc="std of a normal s_left init with init='residual'"),
        qkv_blocks=Option(None, int, choices=(1, 3),
                          doc='independent s_right row blocks on a fused qkv (None: 3 on ViT, '
                              '1 on Swin, as the official code)'),
        shift=Option(True, bool, doc='learn the bias shift f (a bias-free module cannot merge it)'))
    prefixes = ('rlrr_', )
    no_decay = ('rlrr_', )

    def attach(self):
        fan_in, fan_out = in_out_features(self.module)
        blocks = (self.opts.qkv_blocks if self.method.table.qkv_blocks(self.name) == 3
                  else 1)  # (only a fused qkv has blocks)
        if blocks is None:
            blocks = 3 if self.method.table.kind == 'vit' else 1
        if fan_out % blocks:
            raise OptionError(f'RLRR on {self.name}: qkv_blocks={blocks} does not divide its '
                              f'{fan_out} output rows')
        self.blocks = blocks
        if self.opts.init == 'official':
            left = torch.empty(fan_out).uniform_(-math.sqrt(6.0), math.sqrt(6.0))
            bound = math.sqrt(6.0 / fan_in)
            right = torch.empty(blocks, fan_in).uniform_(-bound, bound)
        else:
            left = torch.zeros(fan_out)
            if self.opts.left_std:
                left.normal_(0, self.opts.left_std)
            right = torch.ones(blocks, fan_in)
        self.left = self.add_parameter('rlrr_left', left)
        self.right = self.add_parameter('rlrr_right', right if blocks > 1 else right[0].clone())
        w_name, b_name = weight_and_bias_names(self.module)
        self.has_bias = getattr(self.module, b_name) is not None
        use_shift = self.opts.shift
        if use_shift and not self.has_bias and self.role == 'qkv' and self.from_default:
            # a bias-free key projection (EVA-02): a shift there adds q·f to all logits of a query,
            # which the softmax cancels; the default placement leaves it out and stays mergeable
            use_shift = False
        self.shift = self.add_parameter('rlrr_bias', torch.zeros(fan_out)) if use_shift else None
        names = (w_name, b_name) if self.has_bias else (w_name, )
        if self.shift is not None and not self.has_bias:
            # no stock bias: the shift is added to the output (trains; merge is refused)
            self.handles.append(self.module.register_forward_hook(
                lambda module, args, out: out + self.shift))
        if self.reparam or not is_plain_linear(self.module):
            self.add_weight_transform('rlrr', names, self.effective)
        else:  # a plain Linear: one lean op (see the module doc)
            self.handles.append(replace_forward(self.module, self.rebuilt_forward))

    def tensors(self):
        """The trained tensors :meth:`rebuild` reads."""
        shift = (self.shift, ) if self.shift is not None and self.has_bias else ()
        return (self.left, self.right) + shift

    def rebuild(self, weight, bias, tensors, memo=None):
        """``(W + (s_left s_rightᵀ) ⊙ W, b + f, ())`` from ``tensors = (s_left, s_right[, f])``
        (one ``s_right`` per row block)."""
        left, right = tensors[:2]
        scale = (left.view(self.blocks, -1, 1) * right.view(self.blocks, 1, -1)
                 ).reshape(left.shape[0], -1)
        weight = torch.addcmul(weight, scale, weight)
        if len(tensors) > 2:
            bias = bias + tensors[2]
        return weight, bias, ()

    def rebuilt_forward(self, module, stock_forward, x):
        return rebuilt_linear(x, module.weight, module.bias, self.rebuild, *self.tensors())

    def effective(self, module, params):
        w_name, b_name = weight_and_bias_names(module)
        weight, bias, _ = self.rebuild(params[w_name], params.get(b_name), self.tensors())
        out = {w_name: weight}
        if self.has_bias:
            out[b_name] = bias
        return out

    def merge_blocker(self):
        if self.shift is not None and not self.has_bias:
            return (f'RLRR on {self.name}: the module has no bias to take the shift f, so the tuned '
                    f'model has no stock checkpoint; set shift=False for this target '
                    f'(targets={{{self.role or self.name!r}: dict(shift=False)}}) or leave it out')
        return None

    def merge(self):
        w_name, b_name = weight_and_bias_names(self.module)
        params = {w_name: getattr(self.module, w_name)}
        if self.has_bias:
            params[b_name] = getattr(self.module, b_name)
        for name, value in self.effective(self.module, params).items():
            getattr(self.module, name).copy_(value)


VIT_TARGETS = ('qkv', 'proj', 'fc1', 'fc2', 'patch_embed', 'norm1', 'norm2', 'final_norm')
SWIN_TARGETS = ('qkv', 'proj', 'fc1', 'fc2', 'norm1', 'norm2', 'out_norm')


@PEFT_METHODS.register_module()
class RLRR(PeftMethod):
    """Residual low-rank rescaling of the block Linears plus SSF on norms (and ViT's patch
    embedding), at the official code's positions.

    Args:
        targets: default (official positions): ViT — qkv, proj, fc1, fc2 (RLRR) and
            patch_embed, norm1, norm2, final norm (SSF); Swin — qkv, proj, fc1, fc2 (RLRR) and
            norm1, norm2, output norms (SSF).
        patch_merging (bool): also RLRR on Swin's patch-merging ``reduction`` (official; bias-free,
            so its shift cannot merge into a stock checkpoint). Default False.
        The RLRR units take ``init``, ``left_std``, ``qkv_blocks`` and ``shift``; the SSF units
        ``init_std``, ``shift`` and ``fold_norms`` (``shift`` reaches both).
    """
    unit_classes = (RLRRUnit, SSFUnit)
    card = MethodCard(zoo='rlrr', folder='rlrr', suites=('vtab1k', 'fgvc'), label='RLRR',
                      count='official code (zstarN70/RLRR): ViT-B/16 + 100-class head 365,668; '
                            'Swin-B with patch_merging 460,644')
    #: ``shift=False`` turns off both RLRR's bias shift f and the SSF units' shift β
    fan_out_options = ('shift', )

    def __init__(self, targets=None, patch_merging=False, **options):
        if not isinstance(patch_merging, bool):
            raise OptionError(f'RLRR: option patch_merging={patch_merging!r} must be a bool')
        super().__init__(targets=targets, **options)
        self.patch_merging = patch_merging

    def target_specs(self):
        if self.patch_merging:
            check_patch_merging(self, 'merge_reduction')
        if self.targets is not None:
            return super().target_specs()
        roles = VIT_TARGETS if self.table.kind == 'vit' else SWIN_TARGETS
        if self.patch_merging:
            roles += ('merge_reduction', )
        return [(role, {}, True) for role in roles]

    def unit_class(self, module):
        if isinstance(module, (nn.Linear, nn.MultiheadAttention)):
            return RLRRUnit
        return SSFUnit
