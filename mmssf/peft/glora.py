"""GLoRA with a fixed support (Chavan et al., "One-for-All: Generalized LoRA for Parameter-Efficient
Fine-tuning", 2023; official code Arnav0400/ViT-Slim, ``GLoRA/layer.py``).

Per Linear (official: every Linear of the ViT but the head; here the ``qkv``, ``proj``, ``fc1``
and ``fc2`` roles, which on a ViT are those 48):

    W' = W + W ⊙ A + B,        b' = b + b ⊙ D + E + W C

Each of A, B, C, D, E has a *support*: ``'lora'`` (a rank-r product ``A_d A_u``; C: ``C_d C_u``
of shape in × 1), ``'vector'`` (A, B: one value per output row; C: in × 1; D, E: per output),
``'constant'`` (one scalar) or ``'none'``. The official search space: A, B ∈ {lora, vector,
constant, none}, C ∈ {lora, vector, none}, D, E ∈ {constant, none, vector}. Inits as the official:
every ``*_d``, vector and constant starts at zero, ``A_u``, ``B_u``, ``C_u`` Xavier-uniform, so the
model starts at the pretrained function. The computation is the official one (the effective
weight and bias are built and the Linear runs with them) and merging writes exactly those.

The support is chosen per layer by the official two-step recipe — train a supernet with a random
support per layer and forward, then an evolutionary search under a parameter limit — with
``tools/analysis_tools/glora_search.py``, which writes a support file
(:class:`GLoRASupport`) that ``GLoRA(support='FILE')`` reads; without a file every tuned Linear
gets the unit options ``A`` ... ``E`` (default: the largest support, lora / lora / lora / vector /
vector). A damaged file, one of another format or one made for another backbone is refused with
a message naming the file and the difference.

Supernet mode (``GLoRA(supernet=True)``, the first step of the search; official
``SuperScalableLinear``): every tuned Linear holds the largest supports' tensors (A, B, C as
rank-r products, D, E as vectors) and each forward of a layer uses one support drawn uniformly
from the search space (the official draws one of the 432 configurations per layer per forward),
the smaller supports read as the official ``prepare_path`` reads them from the largest tensors:
``'vector'`` of A / B / C is the first column of the down factor (``X_d[:, :1]``),
``'constant'`` its first entry (``X_d[0, 0]``; D / E: ``X[0]``). :meth:`GLoRA.set_supports`
fixes one support per layer (the search's evaluation of a candidate; official ``eval_config``)
and ``set_supports(None)`` returns to drawing. A supernet does not merge.
"""
import random
import json
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from ..fileio import atomic_write_text
from ..registry import PEFT_METHODS
from .base import PeftMethod, PeftUnit
from .card import MethodCard
from .delta_weight import in_out_features
from .hooks import weight_and_bias_names
from .options import Option, OptionError

#: the official search space of each support (``GLoRA/evolution.py``; ``LoRA_<r>`` is ``lora``)
CHOICES = dict(A=('lora', 'vector', 'constant', 'none'), B=('lora', 'vector', 'constant', 'none'),
               C=('lora', 'vector', 'none'), D=('constant', 'none', 'vector'),
               E=('constant', 'none', 'vector'))
TENSORS = tuple(CHOICES)
FORMAT = 'mmssf-glora-support'
#: the support whose tensors hold every other (the default and the supernet's)
LARGEST = dict(A='lora', B='lora', C='lora', D='vector', E='vector')
FORMAT_VERSION = 1


def support_cost(name: str, kind: str, fan_in: int, fan_out: int, r: int) -> int:
    """Trainable parameters of one support (the official ``get_param_tensor``)."""
    rows, cols = (fan_in, 1) if name == 'C' else (fan_out, fan_in)
    if kind == 'lora':
        return r * (rows + cols)
    return {'vector': rows, 'constant': 1, 'none': 0}[kind]


def layer_cost(config: Dict[str, str], fan_in: int, fan_out: int, r: int) -> int:
    return sum(support_cost(k, config[k], fan_in, fan_out, r) for k in TENSORS)


def glora_weight_and_bias(weight, bias, a, b, c, d, e):
    """The official re-parameterisation: ``(W + W ⊙ A + B, b + b ⊙ D + E + W C)`` (zero terms
    may be ``None``); a bias-free Linear gets ``E + W C`` (official)."""
    new_w = weight
    if a is not None:
        new_w = new_w + weight * a
    if b is not None:
        new_w = new_w + b
    new_b = bias
    if bias is not None and d is not None:
        new_b = new_b + bias * d
    if e is not None:
        new_b = e.expand(weight.shape[0]) if new_b is None else new_b + e
    if c is not None:
        prompt = (weight @ c).squeeze(-1)
        new_b = prompt if new_b is None else new_b + prompt
    return new_w, new_b


class GLoRAUnit(PeftUnit):
    """One Linear (or fused in-projection) with fixed supports for A ... E (see module doc)."""
    option_spec = dict(
        r=Option(4, int, min=1, doc="rank of the 'lora' supports (official supernet: 4)"),
        **{name: Option(LARGEST[name], str, choices=CHOICES[name], doc=f'support of {name}')
           for name in TENSORS})
    prefixes = ('glora_', )

    @classmethod
    def can_wrap(cls, module, host=None):
        return isinstance(module, nn.Linear) or (isinstance(module, nn.MultiheadAttention)
                                                 and module._qkv_same_embed_dim)

    @classmethod
    def num_params(cls, module, r, row_blocks=1):
        fan_in, fan_out = in_out_features(module)
        return layer_cost(LARGEST, fan_in, fan_out // row_blocks, r)

    def config(self) -> Dict[str, str]:
        return {name: getattr(self.opts, name) for name in TENSORS}

    def attach(self):
        #: supernet mode: the support of the next forward (None: draw one per forward)
        self.supernet = bool(getattr(self.method, 'supernet', False))
        self.fixed_support: Optional[Dict[str, str]] = None
        self.fan_in, self.fan_out = in_out_features(self.module)
        self.w_name, self.b_name = weight_and_bias_names(self.module)
        self.has_bias = getattr(self.module, self.b_name, None) is not None
        r = self.opts.r
        for name, kind in self.config().items():
            rows, cols = (self.fan_in, 1) if name == 'C' else (self.fan_out, self.fan_in)
            if name in 'DE':
                rows, cols = self.fan_out, None
            key = f'glora_{name}'
            if kind == 'lora':
                self.add_parameter(key + '_d', torch.zeros(rows, r))
                up = torch.empty(r, cols)
                nn.init.xavier_uniform_(up)
                self.add_parameter(key + '_u', up)
            elif kind == 'vector':
                self.add_parameter(key, torch.zeros(rows) if cols is None else torch.zeros(rows, 1))
            elif kind == 'constant':
                self.add_parameter(key, torch.zeros(1))
        self.add_weight_transform('glora', (self.w_name, self.b_name), self.reparameterize)

    def tensor(self, name: str, kind: Optional[str] = None) -> Optional[torch.Tensor]:
        """A, B, C, D or E as the official ``prepare_path`` builds it (None for 'none'); in
        supernet mode ``kind`` is read from the largest tensors (see the module doc)."""
        if kind is None:
            kind = getattr(self.opts, name)
        if kind == 'none':
            return None
        if self.supernet and name in 'ABC':
            down = getattr(self.module, f'glora_{name}_d')
            if kind == 'vector':
                return down[:, :1]
            if kind == 'constant':
                return down[0, 0]
        elif self.supernet and kind == 'constant':
            return getattr(self.module, f'glora_{name}')[0]
        if kind == 'lora':
            return getattr(self.module, f'glora_{name}_d') @ getattr(self.module, f'glora_{name}_u')
        return getattr(self.module, f'glora_{name}')

    def draw_support(self) -> Dict[str, str]:
        """One support drawn uniformly from the search space (the official ``random.choice``
        over the 432 configurations; seeded by the runner's ``random`` seed)."""
        return {name: random.choice(CHOICES[name]) for name in TENSORS}

    def effective(self, weight, bias, support: Optional[Dict[str, str]] = None):
        support = support or {}
        return glora_weight_and_bias(weight, bias,
                                     *(self.tensor(n, support.get(n)) for n in TENSORS))

    def reparameterize(self, module, params):
        support = None
        if self.supernet:
            support = self.fixed_support or self.draw_support()
        weight, bias = self.effective(params[self.w_name], params[self.b_name], support)
        out = {self.w_name: weight}
        if bias is not None:  # (a bias-free Linear with E / C trains with one; merge refuses)
            out[self.b_name] = bias
        return out

    def merge_blocker(self):
        if self.supernet:
            return (f'GLoRA on {self.name} is a supernet (a support drawn per forward), which has '
                    f'no single weight to merge: search a support with '
                    f'tools/analysis_tools/glora_search.py and train GLoRA(support=FILE)')
        extra = [n for n in 'CE' if getattr(self.opts, n) != 'none']
        if not self.has_bias and extra:
            return (f'GLoRA on {self.name}: {" and ".join(extra)} add a bias, which this Linear '
                    f'lacks (set {"=".join(extra)}=\'none\' there to keep it mergeable)')
        return None

    def merge(self):
        weight = getattr(self.module, self.w_name)
        bias = getattr(self.module, self.b_name) if self.has_bias else None
        new_w, new_b = self.effective(weight, bias)
        weight.copy_(new_w)
        if self.has_bias:
            bias.copy_(new_b)


def backbone_fingerprint(backbone: nn.Module, names) -> dict:
    from .targets import find_table
    cls = type(backbone)
    modules = dict(backbone.named_modules())
    return dict(table=find_table(backbone).name, cls=f'{cls.__module__}.{cls.__qualname__}',
                layers={n: list(in_out_features(modules[n])) for n in names})


@dataclass
class GLoRASupport:
    """Per-layer supports of one backbone: the output of ``glora_search.py``.

    Attributes:
        rank: r of the 'lora' supports.
        supports: ``{module name: dict(A=, B=, C=, D=, E=)}``.
        backbone: fingerprint (target table, class, ``[in, out]`` of every layer).
        params: trainable parameters of the supports (head not included).
        search: how the supports were found (supernet steps, population, accuracy ...).
    """
    rank: int
    supports: Dict[str, Dict[str, str]]
    backbone: dict
    params: int = 0
    search: dict = field(default_factory=dict)
    path: Optional[str] = None

    def save(self, path: str) -> str:
        if osp.isdir(path) or not path.endswith('.json'):
            path = osp.join(path, 'glora_support.json')
        os.makedirs(osp.dirname(path) or '.', exist_ok=True)
        atomic_write_text(json.dumps(dict(format=FORMAT, version=FORMAT_VERSION, rank=self.rank,
                                          params=self.params, backbone=self.backbone,
                                          search=self.search, supports=self.supports),
                                     indent=1), path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str) -> 'GLoRASupport':
        if osp.isdir(path):
            path = osp.join(path, 'glora_support.json')
        redo = ('search it again with `python tools/analysis_tools/glora_search.py CONFIG '
                '--params 0.3M --out ...`')
        if not osp.isfile(path):
            raise FileNotFoundError(f'GLoRA support file {path} does not exist: search it first '
                                    f'with `python tools/analysis_tools/glora_search.py CONFIG '
                                    f'--params 0.3M --out {osp.dirname(path) or "."}`')
        try:
            with open(path, encoding='utf-8') as f:
                info = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f'GLoRA support file {path} is not valid JSON ({err}): the file is '
                             f'truncated or damaged; {redo}') from None
        if not isinstance(info, dict) or info.get('format') != FORMAT:
            raise ValueError(f'{path} is not an mmssf GLoRA support file (format {FORMAT!r})')
        if info.get('version') != FORMAT_VERSION:
            raise ValueError(f'{path} is a GLoRA support file of version {info.get("version")}; '
                             f'this mmssf reads version {FORMAT_VERSION}: {redo}')
        missing = [k for k in ('rank', 'supports', 'backbone') if k not in info]
        if missing:
            raise ValueError(f'GLoRA support file {path} lacks {", ".join(missing)}; {redo}')
        supports = info['supports']
        if not isinstance(supports, dict) or not supports:
            raise ValueError(f'GLoRA support file {path}: "supports" must be a non-empty object '
                             f'(module name -> dict(A=, B=, C=, D=, E=)); {redo}')
        for name, config in supports.items():
            if not isinstance(config, dict) or set(config) != set(TENSORS):
                raise ValueError(f'GLoRA support file {path}: the support of {name!r} must name '
                                 f'exactly {", ".join(TENSORS)}, got {config!r}; {redo}')
            for key, kind in config.items():
                if kind not in CHOICES[key]:
                    raise ValueError(f'GLoRA support file {path}: {name!r} has {key}={kind!r}, '
                                     f'not one of {", ".join(map(repr, CHOICES[key]))}; {redo}')
        if not isinstance(info['rank'], int) or isinstance(info['rank'], bool) \
                or info['rank'] < 1:
            raise ValueError(f'GLoRA support file {path}: rank must be a positive int, got '
                             f'{info["rank"]!r}; {redo}')
        return cls(rank=info['rank'], supports=supports, backbone=info['backbone'],
                   params=info.get('params', 0), search=info.get('search', {}), path=path)

    def check_backbone(self, backbone: nn.Module) -> None:
        """Raise ``ValueError`` naming the difference if the file was made for another backbone."""
        where = f' {self.path}' if self.path else ''
        modules = dict(backbone.named_modules())
        unknown = [n for n in self.supports if n not in modules
                   or not GLoRAUnit.can_wrap(modules[n])]
        if unknown:
            raise ValueError(f'GLoRA support file{where} names {", ".join(unknown[:4])}, which '
                             f'this {type(backbone).__name__} has no Linear of: it was made for '
                             f'another backbone; search it again for this config')
        mine = backbone_fingerprint(backbone, list(self.supports))
        if mine['table'] != self.backbone.get('table'):
            raise ValueError(f'GLoRA support file{where} was made for a '
                             f'{self.backbone.get("table")} but this backbone is a '
                             f'{mine["table"]}: search it again for this config')
        theirs = {k: list(v) for k, v in self.backbone.get('layers', {}).items()}
        if mine['layers'] != theirs:
            diff = sorted(k for k in set(mine['layers']) | set(theirs)
                          if mine['layers'].get(k) != theirs.get(k))
            raise ValueError(f'GLoRA support file{where} was made for another {mine["table"]} '
                             f'architecture: layers differ: {", ".join(diff[:6])}. Search it '
                             f'again for this config')


@PEFT_METHODS.register_module()
class GLoRA(PeftMethod):
    """GLoRA with fixed per-layer supports (see the module doc).

    Args:
        support: path of a support file written by ``tools/analysis_tools/glora_search.py``
            (its layers and supports; then ``targets``, ``r`` and ``A`` ... ``E`` come from the
            file and may not be given). None: every target gets the unit options below.
        targets: default ``('qkv', 'proj', 'fc1', 'fc2')``.
        supernet: the search's supernet (see the module doc): the largest supports' tensors,
            one support drawn per layer and forward; ``A`` ... ``E`` and ``support`` may not be
            given. Trained and searched by ``tools/analysis_tools/glora_search.py``.
    """
    unit_cls = GLoRAUnit
    default_targets = ('qkv', 'proj', 'fc1', 'fc2')
    card = MethodCard(zoo='glora', folder='glora', label='GLoRA (r=4, fixed support)',
                      count='per support: lora r·(rows + cols), vector rows, constant 1 '
                            '(Chavan et al. 2023, official get_param)')

    def __init__(self, support: Optional[str] = None, targets=None, supernet: bool = False,
                 **options):
        super().__init__(targets=targets, **options)
        if not isinstance(supernet, bool):
            raise OptionError(f'GLoRA: supernet must be True or False, got {supernet!r}')
        if supernet:
            given = sorted(set(options) & set(TENSORS)) + (['support'] if support else [])
            if given:
                raise OptionError(f'GLoRA: supernet=True holds the largest supports and draws '
                                  f'one per forward; {", ".join(given)} cannot be given with it '
                                  f'(drop them, or drop supernet=)')
        self.supernet = supernet
        self.support = support
        self.support_file: Optional[GLoRASupport] = None
        if support is not None:
            if not isinstance(support, str):
                raise OptionError(f'GLoRA: support must be the path of a support file, got '
                                  f'{support!r}')
            given = sorted(set(options) & ({'r'} | set(TENSORS))) + \
                (['targets'] if targets is not None else [])
            if given:
                raise OptionError(f'GLoRA: {", ".join(given)} come from the support file '
                                  f'{support}; drop them or drop support=')
            self.support_file = GLoRASupport.load(support)

    def build_units(self, backbone):
        if self.support_file is None:
            units = super().build_units(backbone)
        else:
            self.support_file.check_backbone(backbone)
            modules = dict(backbone.named_modules())
            units = [GLoRAUnit(self, backbone, name, modules[name], self.table.role_of(name),
                               False, r=self.support_file.rank, **config)
                     for name, config in self.support_file.supports.items()]
        for unit in units:
            if not GLoRAUnit.can_wrap(unit.module):
                raise OptionError(f'GLoRA tunes Linear layers (and fused in-projections), not '
                                  f'{unit.name} ({type(unit.module).__name__})')
            if self.supernet and unit.config() != LARGEST:
                raise OptionError(f'GLoRA: supernet=True holds the largest supports '
                                  f'{LARGEST} on every layer; {unit.name} was given '
                                  f'{unit.config()} (drop its per-target A ... E)')
        return units

    def set_supports(self, supports: Optional[Dict[str, Dict[str, str]]]) -> None:
        """Supernet: fix each layer's support (``{module name: dict(A=, ..., E=)}``, every
        tuned layer named; the official ``eval_config``), or ``None`` to draw per forward."""
        if not self.supernet:
            raise ValueError('GLoRA.set_supports: only a supernet (GLoRA(supernet=True)) switches '
                             'supports; a fixed-support GLoRA reads them from its support file')
        names = [u.name for u in self.units]
        if supports is not None:
            if set(supports) != set(names):
                missing = sorted(set(names) - set(supports))
                extra = sorted(set(supports) - set(names))
                raise ValueError(f'GLoRA.set_supports: supports must name every tuned layer; '
                                 f'missing {missing[:4]}, unknown {extra[:4]}')
            for name, config in supports.items():
                if set(config) != set(TENSORS) or any(config[k] not in CHOICES[k]
                                                      for k in TENSORS):
                    raise ValueError(f'GLoRA.set_supports: {name}: {config!r} is not a support '
                                     f'(A ... E from {CHOICES})')
        for unit in self.units:
            unit.fixed_support = None if supports is None else dict(supports[unit.name])

    def layers(self) -> Dict[str, List[int]]:
        """``{module name: [in, out]}`` of every tuned layer (the search's cost model)."""
        return {u.name: [u.fan_in, u.fan_out] for u in self.units}

    def describe(self):
        out = super().describe()
        out['support'] = self.support
        if self.supernet:
            out['supernet'] = True
        return out
