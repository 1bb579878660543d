"""VPT: visual prompt tuning, shallow and deep, on ViT and Swin (VPT, Jia et al. ECCV 2022).

``p`` learnable prompt tokens of the block width, initialised uniform(±sqrt(6 / (3 · patch area
+ d))). Not mergeable: prompts change the token sequence; the PEFT-only state dict is the export.

ViT: the prompts join the sequence around every encoder layer. They are appended after the patch
tokens (self-attention, LayerNorm and MLP are permutation-equivariant and prompts get no position
embedding, so this equals the paper's ``[CLS, prompts, patches]``) and removed from the layer's
output, so everything outside the layers — output formatting, the cls token, the dense feature
maps of mmdet / mmseg — sees the stock sequence. Deep: each layer gets its own prompts. Shallow:
layer 0 gets the prompts and later layers get the previous layer's prompt outputs.

Swin (the official VPT code's token flow): the prompts are tokens of the sequence ``[prompts,
patches]`` from the first block on.

* every block's norm1 normalises them with the patches; its window attention shows every window
  of an image the same ``p`` prompt tokens (zero relative-position bias, never masked, shifted
  windows included); the ``p`` prompt outputs are averaged over that image's windows (padding
  windows included: the attention runs on them) and go on through the residual stream, norm2 and
  the MLP like any token (one DropPath draw per image for prompts and patches);
* patch merging gives each prompt its own token at the next stage: the prompt stands at every
  position of the merged neighbourhood (the official repeats it 4x along channels), so the merge
  norm and reduction see it like a patch;
* deep: every block replaces the prompt slots with its own set before it runs (stage 0's first
  block prepends its set); shallow: one set, prepended before the first block, flows to the end;
* outputs: each ``norm{i}`` normalises prompts and patches; the prompts are then dropped before
  the map ``B x C x H x W`` is built, so mmdet / mmseg (and mmpretrain's intermediate stages)
  return the stock shapes. mmpretrain classifiers average-pool the last map: there (option
  ``pool_prompts``, on by default) the normalised prompts join that average as in the official
  code — each position of the last map becomes ``(n · patch + Σ prompts) / (n + p)`` for ``n``
  patches, whose spatial mean is the mean over all ``n + p`` tokens.

The prompts are taken out of the sequence around every spatial op (window padding, shift and
partition inside ShiftWindowMSA; padding and unfold in patch merging) and put back after it, by
forward hooks on the stock modules; the window attention itself is replaced (``replace_forward``)
because the prompt slots need their own rows / columns of the relative-position bias and mask.

Deliberate deviation: the official code expands the prompts window-major over a batch-major
stack of windows (and averages the same way), so at batch size > 1 images exchange prompt tokens;
here each image's prompts stay with its own windows (equal to the official at batch size 1).
"""
import math

import torch
from torch import nn

from ..registry import PEFT_METHODS
from .base import MergeError, PeftMethod, PeftUnit
from .card import MethodCard
from .hooks import replace_forward
from .options import Option, OptionError
from .targets import (find_table, module_in, patch_embedding, resolve_targets, swin_stage_of,
                      window_attention_width, window_attention_with_leading_tokens)


def prompt_init_bound(backbone: nn.Module, dim: int) -> float:
    """VPT's uniform init bound sqrt(6 / (3 · patch_h · patch_w + d))."""
    kernel = patch_embedding(backbone, find_table(backbone)).kernel_size
    return math.sqrt(6.0 / (3 * kernel[0] * kernel[1] + dim))


class _PromptUnit(PeftUnit):
    option_spec = dict(num_prompts=Option(10, int, min=1, doc='prompt tokens (per layer when deep)'))
    prefixes = ('vpt_', )
    no_decay = ('vpt_', )
    mergeable = False

    def merge_blocker(self):
        return self.method.not_mergeable_reason()

    def make_prompts(self, dim: int) -> nn.Parameter:
        bound = prompt_init_bound(self.backbone, dim)
        return self.add_parameter('vpt_prompt',
                                  torch.empty(self.opts.num_prompts, dim).uniform_(-bound, bound))

    @property
    def owns_prompts(self) -> bool:
        return 'vpt_prompt' in self.param_names

    def merge(self):
        raise MergeError(self.method.not_mergeable_reason())


class ViTLayerPrompts(_PromptUnit):
    """Adds prompts to one ViT encoder layer's input and strips them from its output."""

    def attach(self):
        if self.method.deep or self.method.layer_index(self) == 0:
            self.make_prompts(patch_embedding(self.backbone, self.method.table).out_channels)
        self.handles.append(self.module.register_forward_pre_hook(self.add_prompts))
        self.handles.append(self.module.register_forward_hook(self.strip_prompts))

    def add_prompts(self, module, args):
        x = args[0]
        if self.owns_prompts:
            prompts = module.vpt_prompt.unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
        else:
            prompts = self.method.carry
        return (torch.cat([x, prompts], dim=1), ) + tuple(args[1:])

    def strip_prompts(self, module, args, out):
        num = self.method.num_prompts
        self.method.carry = out[:, -num:]
        return out[:, :-num]


# -- Swin -----------------------------------------------------------------------------------------
def _carries_prompts(tokens: torch.Tensor, hw_shape, num: int, where: str) -> bool:
    """Whether ``tokens`` (B x L x C) is ``[prompts, patches]`` or patches only."""
    patches = hw_shape[0] * hw_shape[1]
    if tokens.shape[1] == patches + num:
        return True
    if tokens.shape[1] == patches:
        return False
    raise RuntimeError(f'VPT: {where} got {tokens.shape[1]} tokens for a {tuple(hw_shape)} map '
                       f'and {num} prompts')


class SwinBlockPrompts(_PromptUnit):
    """One Swin block: its prompt set (deep, or the first block of shallow) and the prompt
    tokens' way through its window attention.

    The block's ShiftWindowMSA gets the patches only (its padding / shift / partition are
    spatial); the normalised prompts wait here, join every window inside the window attention,
    and their window-averaged outputs rejoin the sequence at the DropPath that ends
    ShiftWindowMSA, so the block's residual, norm2 and MLP see ``[prompts, patches]``.
    """

    #: carries the prompt tokens through the block without a prompt set of its own (deep mode on
    #: a subset of blocks: the blocks not targeted)
    flow_only = False

    def attach(self):
        if self.role != 'block':
            raise ValueError(f'VPT on {self.method.table.name} puts prompt sets on blocks (role '
                             f"'block'); target {self.name!r} is a {self.role or 'module'} — "
                             f"use targets=['block'] or block names like 'stages.0.blocks.1'")
        self.stage = swin_stage_of(self.name)
        parts = {}
        for role in ('shift_window_attn', 'window_attn', 'shift_window_drop'):
            found = module_in(self.backbone, self.method.table, role, self.name)
            if found is None:
                raise TypeError(f'VPT: no {role} module inside {self.name} of '
                                f'{self.method.table.name}')
            parts[role] = found[1]
        self.window_attn = parts['window_attn']
        self.prompts_in = self.prompts_out = None
        if self.method.deep and not self.flow_only:
            self.make_prompts(self.width)
        self.handles += [
            self.module.register_forward_pre_hook(self.enter_block),
            self.module.register_forward_hook(self.leave_block),
            parts['shift_window_attn'].register_forward_pre_hook(self.lift_prompts),
            replace_forward(self.window_attn, self.prompted_window_attention),
            parts['shift_window_drop'].register_forward_pre_hook(self.rejoin_prompts),
        ]

    @property
    def width(self) -> int:
        return window_attention_width(self.window_attn)

    def enter_block(self, block, args):
        x, hw_shape = args[0], args[1]
        carrying = _carries_prompts(x, hw_shape, self.method.num_prompts, self.name)
        if not self.owns_prompts:
            return None
        prompts = block.vpt_prompt.unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
        patches = x[:, self.method.num_prompts:] if carrying else x  # deep: replace the slots
        return (torch.cat([prompts, patches], dim=1), ) + tuple(args[1:])

    def leave_block(self, block, args, out):
        self.method.stage_carries[self.stage] = _carries_prompts(
            out, args[1], self.method.num_prompts, self.name)

    def lift_prompts(self, attn, args):
        query, hw_shape = args[0], args[1]
        self.prompts_in = self.prompts_out = None
        if not _carries_prompts(query, hw_shape, self.method.num_prompts, self.name + '.attn'):
            return None
        num = self.method.num_prompts
        self.prompts_in = query[:, :num]
        return (query[:, num:], ) + tuple(args[1:])

    def prompted_window_attention(self, msa, stock_forward, x, mask=None):
        """Window attention over ``[prompts, window tokens]`` for every window of an image."""
        prompts = self.prompts_in
        if prompts is None:
            return stock_forward(x, mask=mask)
        batch, num, channels = prompts.shape
        windows = x.shape[0]
        per_image = windows // batch  # windows are stacked image-major
        prompts = prompts.unsqueeze(1).expand(batch, per_image, num, channels)
        x = torch.cat([prompts.reshape(windows, num, channels).to(x.dtype), x], dim=1)
        out = window_attention_with_leading_tokens(msa, x, num, mask)
        self.prompts_in = None
        self.prompts_out = out[:, :num].reshape(batch, per_image, num, channels).mean(1)
        return out[:, num:]

    def rejoin_prompts(self, drop, args):
        prompts, self.prompts_out = self.prompts_out, None
        if prompts is None:
            return None
        x = args[0]
        return (torch.cat([prompts.to(x.dtype), x], dim=1), ) + tuple(args[1:])


class SwinBlockFlow(SwinBlockPrompts):
    """A Swin block that carries the previous block's prompt tokens (no set of its own)."""
    flow_only = True


class SwinMergingPrompts(PeftUnit):
    """Carries the prompt tokens over one patch merging: each prompt stands at every position of
    the unfolded neighbourhood (``nn.Unfold`` is channel-major, hence ``repeat_interleave``)."""
    mergeable = False

    def attach(self):
        table = self.method.table
        entry = module_in(self.backbone, table, 'merge_norm', self.name) or \
            module_in(self.backbone, table, 'merge_reduction', self.name)
        if entry is None:
            raise TypeError(f'VPT: no merge_norm / merge_reduction inside {self.name} of '
                            f'{table.name}')
        self.prompts = None
        self.handles += [self.module.register_forward_pre_hook(self.lift_prompts),
                         entry[1].register_forward_pre_hook(self.rejoin_prompts)]

    def lift_prompts(self, merging, args):
        x, hw_shape = args[0], args[1]
        self.prompts = None
        if not _carries_prompts(x, hw_shape, self.method.num_prompts, self.name):
            return None
        num = self.method.num_prompts
        self.prompts = x[:, :num]
        return (x[:, num:], ) + tuple(args[1:])

    def rejoin_prompts(self, entry, args):
        prompts, self.prompts = self.prompts, None
        if prompts is None:
            return None
        x = args[0]
        positions = x.shape[-1] // prompts.shape[-1]
        prompts = prompts.repeat_interleave(positions, dim=-1).to(x.dtype)
        return (torch.cat([prompts, x], dim=1), ) + tuple(args[1:])

    def merge(self):
        raise MergeError(self.method.not_mergeable_reason())


class SwinOutputPrompts(PeftUnit):
    """Drops the (normalised) prompt tokens from one output stage before its map is built; on
    the pooled last stage of a classifier, folds their share of the average pool into it."""
    mergeable = False

    def attach(self):
        self.stage = swin_stage_of(self.name)
        self.pooled = self.method.pool_prompts and self.stage == self.method.last_stage
        self.handles.append(self.module.register_forward_hook(self.drop_prompts))

    def drop_prompts(self, norm, args, out):
        if not self.method.stage_carries.get(self.stage, False):
            return None
        num = self.method.num_prompts
        patches = out[:, num:]
        if not self.pooled:
            return patches
        count = patches.shape[1]
        return (patches * count + out[:, :num].sum(1, keepdim=True)) / (count + num)

    def merge(self):
        raise MergeError(self.method.not_mergeable_reason())


class _VPT(PeftMethod):
    deep = False
    mergeable = False
    unit_classes = (ViTLayerPrompts, SwinBlockPrompts, SwinBlockFlow, SwinMergingPrompts,
                    SwinOutputPrompts)

    def __init__(self, num_prompts=None, pool_prompts=None, targets=None, **options):
        num_prompts = num_prompts if num_prompts is not None else self.default_num_prompts
        if pool_prompts not in (None, True, False):
            raise OptionError(f'{type(self).__name__}: option pool_prompts={pool_prompts!r} must be '
                              f'None, True or False')
        super().__init__(targets=targets, num_prompts=num_prompts, **options)
        self.num_prompts = num_prompts
        self.pool_prompts = pool_prompts
        self.carry = None  # ViT shallow: the previous layer's prompt outputs
        self.stage_carries = {}  # Swin: stage index -> its output holds prompt tokens
        self.last_stage = None

    def target_specs(self):
        if self.targets is not None:
            return super().target_specs()
        return [('block', {}, False)]

    def unit_class(self, module):
        return ViTLayerPrompts if self.table.kind == 'vit' else SwinBlockPrompts

    def layer_index(self, unit) -> int:
        return len(self.units)

    def apply(self, backbone: nn.Module) -> nn.Module:
        self.check_pool_option(backbone)
        return super().apply(backbone)

    def check_pool_option(self, backbone):
        table = find_table(backbone)
        if table.prompt_blocker:
            raise ValueError(f'{type(self).__name__} cannot prompt {table.name}: '
                             f'{table.prompt_blocker}. Every other method works on it')
        pooled = table.kind == 'swin' and table.pooled_output
        if self.pool_prompts and not pooled:
            raise ValueError(
                f'{type(self).__name__}: pool_prompts=True needs a Swin whose last map is average-'
                f'pooled by a classifier (mmpretrain SwinTransformer); {table.name} '
                f'{"feeds dense heads" if table.kind == "swin" else "reads its cls token"}. '
                f'Valid: pool_prompts=None (default) or False')
        self.pool_prompts = pooled if self.pool_prompts is None else self.pool_prompts

    def after_attach(self, backbone):
        if self.table.kind != 'swin':
            return
        table = self.table
        if not self.deep:  # shallow: one set, on the earliest targeted block
            order = {name: i for i, (name, _) in enumerate(backbone.named_modules())}
            first = min(self.units, key=lambda unit: order[unit.name])
            first.make_prompts(first.width)
        self.last_stage = max(swin_stage_of(n) for n in resolve_targets(backbone, table, 'stage'))
        modules = dict(backbone.named_modules())
        targeted = {unit.name for unit in self.units}
        extra = [(SwinBlockFlow, name)
                 for name in resolve_targets(backbone, table, 'block') if name not in targeted]
        extra += [(SwinMergingPrompts, name)
                  for name in resolve_targets(backbone, table, 'patch_merging', required=False)]
        extra += [(SwinOutputPrompts, name)
                  for name in resolve_targets(backbone, table, 'out_norm', required=False)]
        for unit_cls, name in extra:
            unit = unit_cls(self, backbone, name, modules[name], table.role_of(name), True,
                            **{k: v for k, v in self.options.items() if k in unit_cls.option_spec})
            unit.attach()
            self.units.append(unit)

    def not_mergeable_reason(self):
        return (f'{type(self).__name__} cannot be merged into the stock backbone: prompts change the '
                f'token sequence; export the PEFT-only state dict instead')


@PEFT_METHODS.register_module()
class VPTShallow(_VPT):
    """One prompt set at the input of the first layer / block.

    Args:
        num_prompts (int): prompt tokens. Default 200 (SSF paper's VPT-shallow count).
        pool_prompts (bool, optional): mmpretrain Swin only: the prompt tokens join the average
            pool of the last map (official VPT). ``None`` (default): on for mmpretrain Swin, off
            elsewhere; ``False`` returns the patch map only (e.g. a dense head on mmpretrain Swin).
        targets: defaults to every ViT layer / Swin block (role ``'block'``); the first one gets
            the prompts.
    """
    default_num_prompts = 200
    card = MethodCard(zoo='vpt-shallow', folder='vpt', suites=('vtab1k', 'fgvc'),
                      label='VPT-shallow (200 prompts)',
                      count='p·d (VPT, Jia et al. 2022): ViT-B/16 + 100-class head, p = 200: '
                            '230,500')


@PEFT_METHODS.register_module()
class VPTDeep(_VPT):
    """Own prompts at the input of every layer (ViT) or block (Swin), replacing the prompt slots.

    Args:
        num_prompts (int): prompt tokens per layer / block. Default 50 (SSF paper's VPT-deep count).
        pool_prompts (bool, optional): as for :class:`VPTShallow`.
        targets: the layers / blocks that get a set (default: all, role ``'block'``). On Swin the
            other blocks carry the prompt tokens of the previous one.
    """
    default_num_prompts = 50
    deep = True
    card = MethodCard(zoo='vpt-deep', folder='vpt', suites=('vtab1k', 'fgvc'),
                      label='VPT-deep (50 prompts)',
                      count='p·d per layer / block (VPT, Jia et al. 2022): ViT-B/16 + 100-class '
                            'head, p = 50: 537,700')
