"""FacT: factor-tuning (Jie & Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision
Transformer", AAAI 2023; official code JieShibo/PETL-ViT, ``FacT/fact_tt.py`` / ``fact_tk.py``).

The increments of every tuned weight are slices of one tensor factorised with factors shared by
the whole backbone. For a Linear whose output is ``a`` blocks and whose input is ``b`` blocks of
the token width ``D`` (qkv: a = 3; fc1: a = k, the MLP ratio; fc2: b = k; proj: a = b = 1):

    ΔW = s · (I_a ⊗ V) · S · (I_b ⊗ U),   U ∈ R^{d×D}, V ∈ R^{D×d} (shared), S ∈ R^{a·d × b·d}

* **FacT-TT** (tensor train): ``S`` is the unit's own core, ``fact_core``.
* **FacT-TK** (Tucker): the cores come from one shared ``C ∈ R^{d×d×d}`` and ``P ∈ R^{d×n}``, one
  column per d×d slot of every tuned weight (ViT-B: 12 per block, 144 in all):
  ``C_l = C ×₃ P[:, slots of l]``; on q, k, v and proj ``S = C_lᵀ`` per slot, on fc1
  ``S = reshape(C_l, d × k·d)ᵀ`` and on fc2 ``S = reshape(C_l, d × k·d)``, as the official code
  multiplies them. Slots are numbered in module order (block by block: q, k, v, proj, fc1, fc2).

Official facts kept: U has nn.Linear's init (U(±1/√D)), V starts at zero (the model starts at the
pretrained function); TT cores have nn.Linear's init (U(±1/√fan_in)); TK's C and P are
Xavier-uniform; dropout (0.1) acts on the core's output, during training only; the update is
scaled by ``s``. Merging folds ``ΔW`` into every weight (exact); the shared factors go with it.

Beyond the official (ViT-only) code: every supported backbone. Swin's stages have different
widths, so there is one set of shared factors per width (``fact_u_<D>`` ...), one for a ViT.
Where a weight is re-parameterized (mmseg ViT's ``nn.MultiheadAttention``) the hooked dropout
cannot act; it is left out there with a warning (as SPT-LoRA does).
"""
import logging
import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn

from ..registry import PEFT_METHODS
from .base import PeftMethod
from .card import MethodCard
from .delta_weight import DeltaWeightUnit, in_out_features
from .options import Option, OptionError

_FACT_OPTIONS = dict(
    r=Option(8, int, min=1, doc='rank d of the factors (one value for the whole backbone)'),
    scale=Option(1.0, float, min=0, min_exclusive=True, doc='scale s of the update'),
    dropout=Option(0.1, float, min=0, max=0.999,
                   doc="dropout on the core's output (official 0.1; training only)"))


def blocks_of(owner: str, fan_in: int, fan_out: int) -> Tuple[int, int, int]:
    """``(D, a, b)``: the token width and the output / input blocks of a weight."""
    width = min(fan_in, fan_out)
    if fan_in % width or fan_out % width:
        raise OptionError(f'{owner}: FacT needs a weight whose sizes are multiples of the token '
                          f'width, got {fan_out} × {fan_in}')
    return width, fan_out // width, fan_in // width


class FacTUnit(DeltaWeightUnit):
    """One weight's increment ``s · (I_a ⊗ V) S (I_b ⊗ U)`` (see the module doc)."""
    option_spec = _FACT_OPTIONS
    prefixes = ('fact_', )
    dropout_site = 'update'  # official: on the core's output
    reparam_dropout = 'skip'  # inside nn.MultiheadAttention: warned once by the method

    @classmethod
    def count(cls, fan_in, fan_out, r):
        """The core: ``a·d × b·d`` (TT); the shared factors are counted once per method."""
        _, a, b = blocks_of('FacT', fan_in, fan_out)
        return a * b * r * r

    def create(self, fan_in, rows):
        owner = f'{type(self.method).__name__} on {self.name}'
        if self.opts.r != self.method.rank or self.opts.scale != self.method.scale:
            raise OptionError(f'{owner}: r and scale are shared by every target (one U, V for '
                              f'the whole backbone); set them once, not per target')
        self.width, self.a, self.b = blocks_of(owner, fan_in, rows)
        self.scaling = self.opts.scale
        self.method.factors(self.backbone, self.width)
        self.create_core()

    def create_core(self):
        """TT: the unit's own core (nn.Linear's init of the official per-slot Linears)."""
        d = self.method.rank
        bound = 1 / math.sqrt(self.b * d)
        self.add_parameter('fact_core', torch.empty(self.a * d, self.b * d).uniform_(-bound, bound))

    def core(self) -> torch.Tensor:
        return self.module.fact_core

    def shared(self):
        return self.method.factor_tensors(self.backbone, self.width)

    def delta(self):
        u, v = self.shared()
        eye_a = torch.eye(self.a, dtype=u.dtype, device=u.device)
        eye_b = torch.eye(self.b, dtype=u.dtype, device=u.device)
        return torch.kron(eye_a, v) @ self.core() @ torch.kron(eye_b, u) * self.scaling

    def update(self, x):
        """The official order: ``V(drop(S(U x)))·s`` blockwise (dropout on the core's output)."""
        u, v = self.shared()
        lead = x.shape[:-1]
        h = F.linear(x.reshape(*lead, self.b, self.width), u.to(x.dtype)).reshape(*lead, -1)
        h = F.linear(h, self.core().to(x.dtype))
        if self.dropout:
            h = F.dropout(h, self.dropout, self.module.training)
        h = F.linear(h.reshape(*lead, self.a, -1), v.to(x.dtype)).reshape(*lead, -1)
        return h * self.scaling


class FacTTKUnit(FacTUnit):
    """A FacT-TK weight: its cores are ``C ×₃ P[:, slots]`` (no tensor of its own)."""

    @classmethod
    def count(cls, fan_in, fan_out, r):
        """``r`` per d×d slot (its columns of P); C, U, V are counted once per method."""
        _, a, b = blocks_of('FacT', fan_in, fan_out)
        return a * b * r

    def create_core(self):
        self.slots = self.a * self.b
        self.first_slot = None  # numbered in module order once every unit is built

    def core(self):
        d = self.method.rank
        c = getattr(self.backbone, f'fact_c_{self.width}')
        p = getattr(self.backbone, f'fact_p_{self.width}')
        cores = c @ p[:, self.first_slot:self.first_slot + self.slots]  # d × d × slots
        if self.b > 1 and self.a == 1:  # fc2: the official ``reshape(d, k·d)``
            return cores.reshape(d, self.slots * d)
        if self.a > 1 and self.b == 1 and self.method.table.qkv_blocks(self.name) != 3:
            return cores.reshape(d, self.slots * d).t()  # fc1: its transpose
        if self.b != 1:
            raise OptionError(f'FacTTK on {self.name}: a {self.a}×{self.b}-block weight has no '
                              f'official core layout')
        return cores.permute(2, 1, 0).reshape(self.slots * d, d)  # q, k, v, proj: Cᵀ per slot


class _FacT(PeftMethod):
    """Shared machinery of FacT-TT and FacT-TK: the factors U, V per token width."""
    default_targets = ('qkv', 'proj', 'fc1', 'fc2')
    method_prefixes = ('fact_', )

    def __init__(self, targets=None, **options):
        super().__init__(targets=targets, **options)
        self.rank = self.options.get('r', _FACT_OPTIONS['r'].default)
        self.scale = float(self.options.get('scale', _FACT_OPTIONS['scale'].default))

    def factors(self, backbone, width):
        """Create ``fact_u_<D>`` (nn.Linear's init) and ``fact_v_<D>`` (zero) once per width."""
        if f'fact_u_{width}' in backbone._parameters:
            return
        bound = 1 / math.sqrt(width)
        d = self.rank
        self.add_method_parameter(backbone, f'fact_u_{width}',
                                  torch.empty(d, width).uniform_(-bound, bound))
        self.add_method_parameter(backbone, f'fact_v_{width}', torch.zeros(width, d))

    def factor_tensors(self, backbone, width):
        return getattr(backbone, f'fact_u_{width}'), getattr(backbone, f'fact_v_{width}')

    def after_attach(self, backbone):
        undropped = [u.name for u in self.units if getattr(u, 'dropout_skipped', False)]
        if undropped:
            print_log(f'{type(self).__name__}: no dropout on the cores of '
                      f'{", ".join(undropped)}: their output is never seen by a hook '
                      f'(computed inside nn.MultiheadAttention)', logger='current',
                      level=logging.WARNING)


@PEFT_METHODS.register_module()
class FacTTT(_FacT):
    """FacT-TT (tensor-train format): shared U, V and a core per tuned weight.

    Args:
        targets: default ``('qkv', 'proj', 'fc1', 'fc2')`` of every block (official).
        ViT-B/16: r = 8 gives 21,504 trainable (+ the head); the official VTAB configs pick r and
        scale per task (``FacT/configs/tt/*.yaml``; CIFAR-100: r = 8, scale = 1).
    """
    unit_cls = FacTUnit
    card = MethodCard(zoo='fact-tt', folder='fact', label='FacT-TT (r=8)',
                      count='2·D·d shared + a·b·d² per weight (Jie & Deng 2023)')


@PEFT_METHODS.register_module()
class FacTTK(_FacT):
    """FacT-TK (Tucker format): shared U, V, a core tensor C (d×d×d) and P (d × slots).

    Args:
        targets: default ``('qkv', 'proj', 'fc1', 'fc2')`` of every block (official).
        ViT-B/16, r = 32 (official CIFAR-100 config, scale 0.1): 86,528 trainable (+ the head).
        One C and P per token width (Swin: per stage).
    """
    unit_cls = FacTTKUnit
    card = MethodCard(zoo='fact-tk', folder='fact', label='FacT-TK (r=32)',
                      count='2·D·d + d³ + d·slots shared (Jie & Deng 2023)')

    def after_attach(self, backbone):
        order = {name: i for i, (name, _) in enumerate(backbone.named_modules())}
        slots: Dict[int, int] = {}
        for unit in sorted(self.units, key=lambda u: order[u.name]):
            unit.first_slot = slots.get(unit.width, 0)
            slots[unit.width] = unit.first_slot + unit.slots
        d = self.rank
        for width, total in slots.items():
            c = torch.empty(d, d, d)
            nn.init.xavier_uniform_(c)
            p = torch.empty(d, total)
            nn.init.xavier_uniform_(p)
            self.add_method_parameter(backbone, f'fact_c_{width}', c)
            self.add_method_parameter(backbone, f'fact_p_{width}', p)
        for unit in self.units:
            unit.core()  # a layout without an official core fails here, not in the forward
        super().after_attach(backbone)
