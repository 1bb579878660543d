"""VPT: visual prompt tuning, shallow and deep, on ViT and Swin.

ViT: ``p`` prompt tokens join the sequence around every encoder layer. They are appended after
the patch tokens (self-attention, LayerNorm and MLP are permutation-equivariant and prompts get no
position embedding, so this equals the paper's ``[CLS, prompts, patches]``) and removed from the
layer's output, so everything outside the layers — output formatting, the cls token, the dense
feature maps of mmdet / mmseg — sees the stock sequence. Deep: each layer gets its own prompts.
Shallow: layer 0 gets the prompts and later layers get the previous layer's prompt outputs.

Swin: prompts are shared by every window: appended to each window's tokens inside window
attention, with zero relative-position bias and no mask on the prompt slots; their outputs are
dropped after attention. Deep: one prompt set per block; shallow: the first block only.

Not mergeable: prompts change the sequence; the PEFT-only state dict is the export.
"""
import math
import types

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PEFT_METHODS
from .base import MergeError, PeftMethod, PeftUnit
from .options import Option


def prompt_init_bound(backbone: nn.Module, dim: int) -> float:
    """VPT's uniform init bound sqrt(6 / (3 · patch_h · patch_w + d))."""
    kernel = backbone.patch_embed.projection.kernel_size
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
        num = self.opts.num_prompts
        return self.add_parameter('vpt_prompt', torch.empty(num, dim).uniform_(-bound, bound))

    def merge(self):
        raise MergeError(self.method.not_mergeable_reason())


class ViTLayerPrompts(_PromptUnit):
    """Adds prompts to one ViT encoder layer's input and strips them from its output."""

    def attach(self):
        self.owns_prompts = self.method.deep or self.method.layer_index(self) == 0
        if self.owns_prompts:
            self.make_prompts(self.backbone.patch_embed.projection.out_channels)
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


def _prompted_window_attention(self, x, mask=None):
    """WindowMSA.forward (mmpretrain / mmdet / mmseg share it) with prompts on every window."""
    num_windows_batch, num_tokens, channels = x.shape
    prompts = self.vpt_prompt.unsqueeze(0).expand(num_windows_batch, -1, -1).to(x.dtype)
    x = torch.cat([x, prompts], dim=1)
    total = x.shape[1]
    qkv = self.qkv(x).reshape(num_windows_batch, total, 3, self.num_heads,
                              channels // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * self.scale) @ k.transpose(-2, -1)
    area = self.window_size[0] * self.window_size[1]
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(
        area, area, -1).permute(2, 0, 1)
    pad = total - num_tokens
    attn = attn + F.pad(bias, (0, pad, 0, pad)).unsqueeze(0)  # zero bias on prompt slots
    if mask is not None:
        nw = mask.shape[0]
        mask = F.pad(mask, (0, pad, 0, pad))  # prompts are never masked
        attn = attn.view(num_windows_batch // nw, nw, self.num_heads, total, total) + \
            mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, self.num_heads, total, total)
    attn = self.attn_drop(self.softmax(attn))
    out = (attn @ v).transpose(1, 2).reshape(num_windows_batch, total, channels)
    return self.proj_drop(self.proj(out[:, :num_tokens]))


class SwinWindowPrompts(_PromptUnit):
    """Shares prompts across the windows of one Swin window attention."""

    def attach(self):
        self.make_prompts(self.module.qkv.in_features)
        self.module.forward = types.MethodType(_prompted_window_attention, self.module)

    def detach(self):
        self.module.__dict__.pop('forward', None)
        super().detach()


class _VPT(PeftMethod):
    deep = False
    mergeable = False
    unit_classes = (ViTLayerPrompts, SwinWindowPrompts)

    def __init__(self, num_prompts=None, targets=None, **options):
        num_prompts = num_prompts if num_prompts is not None else self.default_num_prompts
        super().__init__(targets=targets, num_prompts=num_prompts, **options)
        self.num_prompts = num_prompts
        self.carry = None

    def target_specs(self):
        if self.targets is not None:
            return super().target_specs()
        return [('block' if self.table.kind == 'vit' else 'window_attn', {}, False)]

    def unit_class(self, module):
        return ViTLayerPrompts if self.table.kind == 'vit' else SwinWindowPrompts

    def layer_index(self, unit) -> int:
        return len(self.units)

    def after_attach(self, backbone):
        if not self.deep and self.table.kind == 'swin':
            for unit in self.units[1:]:  # shallow Swin: only the first block keeps prompts
                unit.detach()
            self.units = self.units[:1]

    def not_mergeable_reason(self):
        return (f'{type(self).__name__} cannot be merged into the stock backbone: prompts change the '
                f'token sequence; export the PEFT-only state dict instead')


@PEFT_METHODS.register_module()
class VPTShallow(_VPT):
    """Prompts at the input of the first layer only.

    Args:
        num_prompts (int): prompt tokens. Default 200 (SSF paper's VPT-shallow count).
        targets: defaults to every ViT layer / Swin window attention (only the first keeps prompts).
    """
    default_num_prompts = 200


@PEFT_METHODS.register_module()
class VPTDeep(_VPT):
    """Own prompts at the input of every layer (ViT) or every block's window attention (Swin).

    Args:
        num_prompts (int): prompt tokens per layer. Default 50 (SSF paper's VPT-deep count).
    """
    default_num_prompts = 50
    deep = True
