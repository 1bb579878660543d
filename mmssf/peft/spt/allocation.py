"""SPT step 2: where to tune under a parameter budget τ (He et al., "Sensitivity-Aware Visual
Parameter-Efficient Fine-Tuning", ICCV 2023, Sec. 3.2), with the rules of the authors' code.

1. Rank every scored entry by sensitivity; take the global top-t.
2. Candidates are the scored parameters, except that a fused q/k/v parameter (a ``qkv`` Linear's
   weight / bias, ``nn.MultiheadAttention``'s ``in_proj_weight`` / ``in_proj_bias``) is three:
   its q, k and v row blocks, which the official ViT keeps as separate Linears.
3. A weight matrix (or q/k/v block of one) whose count of selected entries c reaches
   σ = (its structured module's parameter cost) / α is tuned *structurally* (LoRA-r or Adapter-r;
   on a block: LoRA ``r·(in + out/3)``, a ``B`` covering only its rows). A vector (bias, norm
   weight, or q/k/v block of a fused bias) with c ≥ dim / β is tuned *whole* (counted as dim;
   the official ``--structured_vector``, β = 5). Any other selected entry is tuned *unstructured*
   (a trainable delta on exactly that entry). Matrices no structured module can wrap (Swin's
   relative position bias table; for Adapter, the fused attention of mmseg's ViT) are only ever
   tuned unstructured.
4. The class token (ViT) is trained and counted in the budget, as the official code does
   (``train_cls_token=False`` freezes it).

The trainable count ``cls token + Σ structured cost + Σ whole vectors + Σ unstructured entries``
never decreases with t, so t is the largest value whose count stays within τ (binary search). The
remaining gap is then filled with the next most sensitive entries that do not open a new
structured module or whole vector, which brings the count to τ unless nothing is left to add (then
t + 1 — one more structured module, above τ — is taken if it lands nearer); the file records the
budget asked, the budget met and whether they agree within 1 %. (The official code sweeps t in
steps of 20k and keeps the nearest count, which can miss τ by tens of percent.)

An allocation is saved as ``allocation.json`` (everything but the indices, human readable) plus
``allocation_indices.pth`` (plain int64 tensors: flat indices of the unstructured entries per
parameter; loads with ``weights_only=True``). Configs point at the JSON file. Names of q/k/v
blocks end in ``:q`` / ``:k`` / ``:v`` (``layers.0.attn.qkv:q``, ``layers.0.attn.qkv.bias:v``).
"""
import json
import math
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..hooks import host_of, weight_and_bias_names
from ..targets import cls_token_name, find_table
from .sensitivity import scored_parameters
from ...fileio import atomic_save, atomic_write_text, load_checkpoint_file  # noqa: I100

KINDS = ('lora', 'adapter')
INDEX_FILE = 'allocation_indices.pth'
#: version 2: q/k/v blocks, whole vectors, the class token (version-1 files must be recomputed)
FORMAT_VERSION = 2
#: the row blocks of a fused q/k/v parameter, in the order its rows are stacked
QKV_BLOCKS = ('q', 'k', 'v')
BLOCK_SEP = ':'
#: scores ranked at first (4·τ at least); the prefix grows when the allocation needs more
MIN_PREFIX = 1 << 20


def parse_budget(text) -> int:
    """``'0.4M'``, ``'400k'``, ``'400000'``, ``4e5`` -> 400000."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip().replace(',', '').replace('_', '')
        scale = {'k': 1e3, 'm': 1e6, 'g': 1e9}.get(s[-1:].lower(), 1)
        try:
            value = float(s[:-1] if scale != 1 else s) * scale
        except ValueError:
            raise ValueError(f'cannot read the budget {text!r}: use e.g. 0.4M, 400k or 400000') from None
    if not math.isfinite(value) or round(value) < 1:
        raise ValueError(f'the SPT budget must be a positive number of parameters (at least 1), '
                         f'got {text!r}')
    return int(round(value))


def structured_unit(kind: str):
    """The unit class of a structured kind, from the registered SPT methods' declarations."""
    from ..registry_facts import method_classes
    for cls in method_classes():
        if getattr(cls, 'kind', None) == kind and getattr(cls, 'structured_unit', None):
            return cls.structured_unit
    raise ValueError(f'no registered SPT method has the structured kind {kind!r}')


def structured_cost(module: nn.Module, kind: str, r: int, row_blocks: int = 1) -> int:
    """Parameters of one rank-r structured unit (LoRA-r ``r·(in + out)``, Adapter-r
    ``2·out·r + r + out``, with ``out / row_blocks`` on one row block), as the unit class declares
    it (``num_params``)."""
    return structured_unit(kind).num_params(module, r, row_blocks=row_blocks)


def block_name(name: str, block: Optional[int]) -> str:
    """``name`` of a whole module / parameter, ``name:q`` (``:k``, ``:v``) of a q/k/v block."""
    return name if block is None else f'{name}{BLOCK_SEP}{QKV_BLOCKS[block]}'


def split_block(name: str) -> Tuple[str, Optional[int]]:
    """``'layers.0.attn.qkv:k'`` -> ``('layers.0.attn.qkv', 1)``; a plain name -> ``(name, None)``."""
    base, sep, block = name.rpartition(BLOCK_SEP)
    if not sep:
        return name, None
    if block not in QKV_BLOCKS:
        raise ValueError(f'{name!r}: a block name ends in one of '
                         f'{", ".join(BLOCK_SEP + b for b in QKV_BLOCKS)}')
    return base, QKV_BLOCKS.index(block)


@dataclass(frozen=True)
class Candidate:
    """What the allocation rule decides on: a scored parameter, or one q/k/v row block of a fused
    one (``start`` / ``size``: its flat range inside the parameter)."""
    param: str
    start: int
    size: int
    block: Optional[int] = None
    #: module a structured unit would wrap (weight matrices only)
    module: Optional[str] = None
    vector: bool = False
    #: output rows of the block (``[start, stop)``), None for a whole parameter
    rows: Optional[Tuple[int, int]] = None

    @property
    def name(self) -> str:
        """Key in the allocation file: the module (structured) or parameter (vector)."""
        return block_name(self.module or self.param, self.block)


def fused_qkv_leaves(table, modules: Dict[str, nn.Module], owner: str) -> Tuple[str, ...]:
    """Leaf names of the parameters of ``owner`` whose rows stack q, k and v."""
    if table.qkv_blocks(owner) != 3 or owner not in modules:
        return ()
    try:
        return tuple(weight_and_bias_names(modules[owner]))
    except TypeError:
        return ()


def candidates(backbone: nn.Module, scores: Dict[str, torch.Tensor], kind: str) -> List[Candidate]:
    """The allocation candidates of ``scores``' parameters, in parameter order."""
    table = find_table(backbone)
    modules = dict(backbone.named_modules())
    out = []
    for name, score in scores.items():
        owner, _, leaf = name.rpartition('.')
        module = structured_candidate(backbone, modules, name, kind)
        vector = score.dim() == 1
        blocks = 3 if leaf in fused_qkv_leaves(table, modules, owner) else 1
        if blocks == 1 or score.shape[0] % blocks:
            out.append(Candidate(name, 0, score.numel(), module=module, vector=vector))
            continue
        rows = score.shape[0] // blocks
        size = score.numel() // blocks
        for b in range(blocks):
            out.append(Candidate(name, b * size, size, block=b, module=module, vector=vector,
                                 rows=(b * rows, (b + 1) * rows)))
    return out


def structured_candidate(backbone: nn.Module, modules: Dict[str, nn.Module], param_name: str,
                         kind: str) -> Optional[str]:
    """The module a structured ``kind`` unit would wrap for ``param_name``, or None."""
    owner_name, _, leaf = param_name.rpartition('.')
    owner = modules.get(owner_name)
    is_matrix = ((isinstance(owner, nn.Linear) and leaf == 'weight')
                 or (isinstance(owner, nn.MultiheadAttention) and leaf == 'in_proj_weight'))
    if not is_matrix:
        return None
    ok = structured_unit(kind).can_wrap(owner, host_of(backbone, owner_name))
    return owner_name if ok else None


def backbone_fingerprint(backbone: nn.Module) -> dict:
    table = find_table(backbone)
    cls = type(backbone)
    return dict(table=table.name, cls=f'{cls.__module__}.{cls.__qualname__}',
                param_shapes={n: list(p.shape) for n, p in scored_parameters(backbone).items()})


@dataclass
class Allocation:
    """Where SPT tunes one backbone.

    Attributes:
        kind: ``'lora'`` or ``'adapter'`` (the structured module).
        rank: r of the structured modules.
        alpha: σ divisor of the matrices (paper default 10).
        structured: ``{module name: dict(param=, params=cost, sensitive=count)}``; a q/k/v block
            is ``'<module>:q'`` (``:k``, ``:v``) with ``rows=[start, stop]`` of the fused output.
        unstructured: ``{param name: sorted int64 flat indices}``.
        budget: ``dict(asked=, met=, structured=, vectors=, unstructured=, cls_token=,
            within_1pct=, note=, top_t=)``.
        beta: σ divisor of the vectors (official 5), None when vectors are tuned entry-wise only.
        vectors: vectors tuned whole, ``{param name: dict(params=dim, sensitive=count)}``
            (``'<param>:q'`` with ``rows`` for a block of a fused q/k/v bias).
        cls_token: ``dict(param=name, params=count)`` when the class token is trained, else None.
        backbone: fingerprint (target table, class, shapes of the scored parameters).
        sensitivity: how the scores were computed (samples, seed, config ...).
        sensitive_counts: ``{param name: entries among the global top-τ}``, ``[q, k, v]`` for
            fused q/k/v parameters (patterns / plots).
    """
    kind: str
    rank: int
    alpha: float
    structured: Dict[str, dict]
    unstructured: Dict[str, torch.Tensor]
    budget: dict
    backbone: dict
    sensitivity: dict = field(default_factory=dict)
    sensitive_counts: Dict[str, object] = field(default_factory=dict)
    path: Optional[str] = None
    beta: Optional[float] = None
    vectors: Dict[str, dict] = field(default_factory=dict)
    cls_token: Optional[dict] = None

    def vector_indices(self) -> Dict[str, torch.Tensor]:
        """``{param name: flat indices}`` of the vectors tuned whole (whole blocks for q/k/v)."""
        out = {}
        for name, info in self.vectors.items():
            param, block = split_block(name)
            start, stop = info['rows'] if block is not None else (0, info['params'])
            index = torch.arange(start, stop, dtype=torch.long)
            out[param] = torch.cat([out[param], index]) if param in out else index
        return out

    def tuned_indices(self) -> Dict[str, torch.Tensor]:
        """``{param name: sorted flat indices}`` that sparse deltas train: the unstructured
        entries and the vectors tuned whole."""
        out = dict(self.unstructured)
        for param, index in self.vector_indices().items():
            out[param] = torch.sort(torch.cat([out[param], index])).values if param in out \
                else index
        return out

    # -- files --------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Plain-type description (everything but the indices)."""
        return dict(version=FORMAT_VERSION, kind=self.kind, rank=self.rank, alpha=self.alpha,
                    beta=self.beta, budget=self.budget, backbone=self.backbone,
                    sensitivity=self.sensitivity, cls_token=self.cls_token,
                    structured=self.structured, vectors=self.vectors,
                    unstructured={k: int(v.numel()) for k, v in self.unstructured.items()},
                    sensitive_counts=self.sensitive_counts, indices=INDEX_FILE)

    def save(self, out_dir: str) -> str:
        os.makedirs(out_dir, exist_ok=True)
        atomic_save({k: v.clone() for k, v in self.unstructured.items()},
                    osp.join(out_dir, INDEX_FILE))
        path = osp.join(out_dir, 'allocation.json')
        atomic_write_text(json.dumps(self.summary(), indent=1), path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str) -> 'Allocation':
        if osp.isdir(path):
            path = osp.join(path, 'allocation.json')
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'SPT allocation {path} does not exist: compute it first with '
                f'`python tools/analysis_tools/spt_sensitivity.py CONFIG --budget 0.4M --out '
                f'{osp.dirname(path) or "."}`')
        recompute = ('recompute it with `python tools/analysis_tools/spt_sensitivity.py CONFIG '
                     '--budget ...`')
        try:
            with open(path, encoding='utf-8') as f:
                info = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f'SPT allocation {path} is not valid JSON ({err}): the file is '
                             f'truncated or damaged; {recompute}') from None
        if isinstance(info, dict) and isinstance(info.get('version'), int) \
                and info['version'] < FORMAT_VERSION:
            raise ValueError(
                f'{path} is an SPT allocation of format {info["version"]}, written by an older '
                f'mmssf (before q/k/v blocks, whole vectors and the class token); this mmssf reads '
                f'format {FORMAT_VERSION}. Recompute it: `python tools/analysis_tools/'
                f'spt_sensitivity.py CONFIG --budget {_asked(info)} --out {osp.dirname(path) or "."}`')
        if not isinstance(info, dict) or info.get('version') != FORMAT_VERSION \
                or info.get('kind') not in KINDS:
            raise ValueError(f'{path} is not an mmssf SPT allocation (version {FORMAT_VERSION}, '
                             f'kind one of {KINDS})')
        missing = [k for k in ('rank', 'alpha', 'structured', 'unstructured', 'budget', 'backbone',
                               'indices') if k not in info]
        if missing:
            raise ValueError(f'SPT allocation {path} lacks {", ".join(missing)}; {recompute}')
        if not isinstance(info['structured'], dict) or not isinstance(info['unstructured'], dict):
            raise ValueError(f'SPT allocation {path}: "structured" and "unstructured" must be '
                             f'objects (module / parameter name -> entry); {recompute}')
        index_path = osp.join(osp.dirname(path), info['indices'])
        if not osp.isfile(index_path):
            raise FileNotFoundError(f'SPT allocation {path} needs its index file {index_path}, '
                                    f'which does not exist; {recompute}')
        indices = load_checkpoint_file(index_path)
        counts = info['unstructured']
        if not isinstance(indices, dict) or set(indices) != set(counts) \
                or any(indices[k].numel() != counts[k] for k in counts):
            raise ValueError(f'{index_path} does not match {path} (entries per parameter differ)')
        for name, index in indices.items():
            check_indices(index, name, index_path)
        return cls(kind=info['kind'], rank=info['rank'], alpha=info['alpha'],
                   structured=info['structured'], unstructured=indices, budget=info['budget'],
                   backbone=info['backbone'], sensitivity=info.get('sensitivity', {}),
                   sensitive_counts=info.get('sensitive_counts', {}), path=path,
                   beta=info.get('beta'), vectors=info.get('vectors', {}),
                   cls_token=info.get('cls_token'))

    # -- checks -------------------------------------------------------------------------------
    def check_backbone(self, backbone: nn.Module) -> None:
        """Raise ``ValueError`` naming the difference if this allocation was made for another
        backbone (implementation or architecture)."""
        mine = backbone_fingerprint(backbone)
        where = f' ({self.path})' if self.path else ''
        if mine['table'] != self.backbone['table']:
            raise ValueError(f'SPT allocation{where} was made for a {self.backbone["table"]} but '
                             f'this backbone is a {mine["table"]}: recompute it for this config')
        theirs = {k: list(v) for k, v in self.backbone['param_shapes'].items()}
        if mine['param_shapes'] != theirs:
            diff = sorted(set(mine['param_shapes']) ^ set(theirs))
            diff += sorted(k for k in set(mine['param_shapes']) & set(theirs)
                           if mine['param_shapes'][k] != theirs[k])
            shown = ', '.join(diff[:6]) + (f' ... ({len(diff) - 6} more)' if len(diff) > 6 else '')
            raise ValueError(f'SPT allocation{where} was made for another {mine["table"]} '
                             f'architecture: parameters differ: {shown}. Recompute it for this config')
        wanted = self.cls_token['param'] if self.cls_token else None
        if wanted and cls_token_name(backbone) != wanted:
            raise ValueError(f'SPT allocation{where} trains the class token {wanted!r}, which this '
                             f'{mine["table"]} does not have (with_cls_token=False?): recompute it '
                             f'for this config')

        self.check_entries(backbone)

    def check_entries(self, backbone: nn.Module) -> None:
        """Raise ``ValueError`` naming the entry and the file if a structured entry is not a
        weight matrix its structured module can wrap (an unknown module, a bias, a norm), or an
        unstructured entry names an unknown parameter or an index outside it."""
        where = f'SPT allocation {self.path}' if self.path else 'SPT allocation'
        modules = dict(backbone.named_modules())
        params = scored_parameters(backbone)
        for entry_name, entry in self.structured.items():
            name, _ = split_block(entry_name)  # 'layers.0.attn.qkv:q' -> the qkv module
            leaf = entry.get('param', 'weight') if isinstance(entry, dict) else 'weight'
            if name not in modules:
                linear = (n for n, m in modules.items() if isinstance(m, nn.Linear))
                raise ValueError(f'{where}: structured entry {name!r} is not a module of this '
                                 f'{type(backbone).__name__} (modules are like {_examples(linear)})')
            if structured_candidate(backbone, modules, f'{name}.{leaf}', self.kind) is None:
                raise ValueError(
                    f'{where}: structured entry {name!r} (param {leaf!r}) cannot take a '
                    f'{self.kind} module: only weight matrices of Linear layers (and the fused '
                    f'attention\'s in_proj_weight) are tuned structurally; biases and norms are '
                    f'tuned unstructured')
        for name, index in self.unstructured.items():
            if name not in params:
                raise ValueError(f'{where}: unstructured entry {name!r} is not a tunable '
                                 f'parameter of this {type(backbone).__name__} (parameters are '
                                 f'like {_examples(params)})')
            check_indices(index, name, self.path or 'the allocation', size=params[name].numel())


def _examples(names, n: int = 4) -> str:
    names = list(names)
    return ', '.join(names[:n]) + (' ...' if len(names) > n else '')


def check_indices(index, name: str, source: str, size: Optional[int] = None) -> None:
    """Unstructured indices of one parameter: 1-D integers, each once, inside the parameter."""
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.is_floating_point() \
            or index.dtype == torch.bool:
        raise ValueError(f'{source}: the indices of {name!r} must be a 1-D integer tensor')
    if index.numel() == 0:
        return
    ordered = torch.sort(index).values
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeated.numel():
        raise ValueError(f'{source}: {repeated.numel()} duplicate indices for {name!r} (e.g. '
                         f'{torch.unique(repeated)[:5].tolist()}): each entry can be tuned once; '
                         f'recompute the allocation')
    low, high = int(index.min()), int(index.max())
    if low < 0 or (size is not None and high >= size):
        raise ValueError(f'{source}: indices of {name!r} out of range ({low}..{high}, the '
                         f'parameter has {size if size is not None else "?"} entries)')


def _asked(info: dict):
    budget = info.get('budget')
    return budget.get('asked', '0.4M') if isinstance(budget, dict) else '0.4M'


def allocate(scores: Dict[str, torch.Tensor], backbone: nn.Module, budget, kind: str = 'lora',
             rank: int = 8, alpha: float = 10.0, beta: Optional[float] = 5.0,
             train_cls_token: bool = True) -> Allocation:
    """Allocate ``budget`` trainable parameters over ``backbone`` from sensitivity ``scores``.

    Args:
        scores: ``{param name: score tensor}`` from :func:`compute_sensitivity` (its keys are the
            tunable parameters; ties are broken by parameter order, then position).
        backbone: the (stock) backbone the scores belong to.
        budget: τ, a count or a string like ``'0.4M'``.
        kind: structured module, ``'lora'`` or ``'adapter'``.
        rank: r of the structured modules.
        alpha: σ = structured cost / alpha for matrices (paper default 10).
        beta: a vector is tuned whole once dim / beta of its entries are selected (official 5);
            None: vectors are tuned entry-wise only.
        train_cls_token: train the class token (where the backbone has one) and count it in the
            budget, as the official code does.

    Raises:
        ValueError: zero / negative budget, or a budget not smaller than the tunable parameters.
    """
    if kind not in KINDS:
        raise ValueError(f'SPT kind must be one of {KINDS}, got {kind!r}')
    if alpha < 1 or rank <= 0 or (beta is not None and beta < 1):
        # (alpha / beta < 1 would make a structured module / whole vector train fewer parameters
        # than the entries it replaces, and the trainable count would no longer grow with t)
        raise ValueError(f'SPT needs alpha >= 1 (paper: 10), beta >= 1 (official: 5) or None, and '
                         f'rank > 0, got alpha={alpha}, beta={beta}, rank={rank}')
    tau = parse_budget(budget)
    names = list(scores)
    cls_name = cls_token_name(backbone) if train_cls_token else None
    cls_count = dict(backbone.named_parameters())[cls_name].numel() if cls_name else 0
    total = sum(scores[n].numel() for n in names) + cls_count
    if tau >= total:
        raise ValueError(f'SPT budget {tau:,} is not smaller than the {total:,} parameters SPT can '
                         f'tune in this {type(backbone).__name__}: use FullFineTune instead, or a '
                         f'smaller budget')
    if tau <= cls_count:
        raise ValueError(f'SPT budget {tau:,} leaves nothing beside the class token '
                         f'({cls_count:,} parameters, trained and counted as the official code '
                         f'does): use a larger budget, or train_cls_token=False '
                         f'(spt_sensitivity.py --freeze-cls-token)')
    modules = dict(backbone.named_modules())
    cands = candidates(backbone, scores, kind)
    param_sizes = torch.tensor([scores[n].numel() for n in names], dtype=torch.long)
    param_starts = torch.cumsum(param_sizes, 0) - param_sizes
    first = dict(zip(names, param_starts.tolist()))
    starts = torch.tensor([first[c.param] + c.start for c in cands], dtype=torch.long)
    cost, sigma = [], []
    for c in cands:
        if c.module:
            blocks = 1 if c.block is None else len(QKV_BLOCKS)
            cost.append(structured_cost(modules[c.module], kind, rank, blocks))
            sigma.append(cost[-1] / alpha)
        elif c.vector and beta is not None:
            cost.append(c.size)
            sigma.append(c.size / beta)
        else:
            cost.append(0)
            sigma.append(float('inf'))
    cost = torch.tensor(cost, dtype=torch.float64)
    sigma = torch.tensor(sigma, dtype=torch.float64)

    flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])
    tau_entries = tau - cls_count
    k = max(4 * tau_entries, MIN_PREFIX)
    while True:  # rank only a prefix (a full sort of a ViT-B's 85M scores is slow); grow if short
        order, complete = ranked_prefix(flat, k)
        seg = seg_of(order, starts)
        picked = _select(order, complete, seg, tau_entries, cost, sigma, starts)
        if picked is not None:
            break
        k *= 4
    del flat
    lo, met, counts, whole, chosen = picked

    selected = torch.sort(torch.cat(chosen)).values
    selected = selected[~whole[seg_of(selected, starts)]]
    sel_param = seg_of(selected, param_starts)
    per_param = torch.bincount(sel_param, minlength=len(names))
    unstructured, offset = {}, 0
    for i, name in enumerate(names):
        n = int(per_param[i])
        if n:
            unstructured[name] = (selected[offset:offset + n] - param_starts[i]).clone()
        offset += n
    structured_modules, vectors = {}, {}
    for i, c in enumerate(cands):
        if not whole[i]:
            continue
        info = dict(params=int(cost[i]), sensitive=int(counts[i]))
        if c.rows is not None:
            info['rows'] = list(c.rows)
        if c.module:
            structured_modules[c.name] = dict(param=c.param.rpartition('.')[2], **info)
        else:
            vectors[c.name] = info
    sensitive = sensitive_counts(order[:tau_entries], seg_of(order[:tau_entries], param_starts),
                                 param_starts, names, backbone)
    n_struct = sum(v['params'] for v in structured_modules.values())
    n_vec = sum(v['params'] for v in vectors.values())
    n_unstruct = sum(int(v.numel()) for v in unstructured.values())
    assert n_struct + n_vec + n_unstruct == met
    met += cls_count
    within = abs(met - tau) <= 0.01 * tau
    note = 'within 1% of the budget asked' if within else (
        'nearest achievable: every further entry would open a structured module or whole vector '
        'beyond the budget, or nothing is left to tune')
    return Allocation(
        kind=kind, rank=rank, alpha=alpha, beta=beta, structured=structured_modules,
        vectors=vectors, unstructured=unstructured,
        cls_token=dict(param=cls_name, params=cls_count) if cls_name else None,
        budget=dict(asked=tau, met=met, structured=n_struct, vectors=n_vec,
                    unstructured=n_unstruct, cls_token=cls_count, within_1pct=within, note=note,
                    top_t=lo),
        backbone=backbone_fingerprint(backbone),
        sensitive_counts=sensitive)


def seg_of(flat_index: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Which parameter each global flat index falls in."""
    return torch.searchsorted(starts, flat_index, right=True) - 1


def sensitive_counts(top, top_seg, starts, names, backbone) -> Dict[str, object]:
    """Entries of each parameter among the global top-τ; fused q/k/v parameters get
    ``[q, k, v]`` (their rows are stacked in that order), for the paper's Figure-4 patterns."""
    table = find_table(backbone)
    per_param = torch.bincount(top_seg, minlength=len(names))
    params = dict(backbone.named_parameters())
    counts = {}
    for i, name in enumerate(names):
        if not per_param[i]:
            continue
        if table.qkv_blocks(name.rpartition('.')[0]) == 3:
            local = top[top_seg == i] - starts[i]
            counts[name] = torch.bincount(local * 3 // params[name].numel(), minlength=3).tolist()
        else:
            counts[name] = int(per_param[i])
    return counts


def ranked_prefix(flat: torch.Tensor, k: int):
    """Flat indices of the highest scores in descending order, ties broken by index (exactly the
    start of a stable descending sort): all entries if ``k >= len(flat)``, else those strictly
    above the k-th largest score. Returns ``(indices, complete)``."""
    if k >= flat.numel():
        return torch.sort(flat, descending=True, stable=True).indices, True
    values, index = torch.topk(flat, k)
    keep = values > values[-1]  # entries tied with the cut may be cut arbitrarily: drop them
    index, perm = torch.sort(index[keep])
    order = torch.sort(values[keep][perm], descending=True, stable=True).indices
    return index[order], False


def _select(order, complete, seg, tau, cost, sigma, starts):
    """Top-t plus the budget fill over a ranked prefix; None when the prefix is too short.

    ``seg`` / ``starts``: the candidate of each ranked entry / the candidates' first flat indices;
    a candidate with ``c >= sigma`` selected entries costs ``cost`` (a structured module or a
    whole vector), otherwise ``c``. Returns ``(t, count, c per candidate, whole per candidate,
    chosen entries)``."""
    num = len(cost)
    available = len(order)
    if not complete and available < tau:
        return None

    def trainable_at(t):
        c = torch.bincount(seg[:t], minlength=num).double()
        structured = c >= sigma
        return int(torch.where(structured, cost, c).sum()), c, structured

    # largest t with count(t) <= tau (count never decreases with t): grow a bound, then bisect
    lo, hi = 0, min(tau, available)
    while trainable_at(hi)[0] <= tau:
        lo = hi
        if hi == available:
            if not complete:
                return None
            break
        hi = min(2 * hi, available)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trainable_at(mid)[0] <= tau:
            lo = mid
        else:
            hi = mid
    met, counts, structured = trainable_at(lo)
    chosen = [order[:lo]]

    # Fill the rest with the next entries that stay unstructured (never open a new module or
    # make a vector whole).
    pos, gap = lo, tau - met
    chunk = max(4 * gap, 1 << 16)
    while gap > 0 and pos < available:
        cand, cand_seg = order[pos:pos + chunk], seg[pos:pos + chunk]
        pos, chunk = pos + chunk, 2 * chunk  # deep scans happen: most entries may be blocked
        keep = ~structured[cand_seg]
        cand, cand_seg = cand[keep], cand_seg[keep]
        # rank of each candidate among the candidates of its own parameter, in sensitivity order
        perm = torch.sort(cand_seg, stable=True).indices
        per_seg = torch.bincount(cand_seg, minlength=num)
        rank_in_seg = torch.empty_like(perm)
        rank_in_seg[perm] = torch.arange(len(perm)) - (torch.cumsum(per_seg, 0) - per_seg)[cand_seg[perm]]
        fits = (counts[cand_seg] + rank_in_seg.double() + 1) < sigma[cand_seg]
        taken = cand[fits][:gap]
        chosen.append(taken)
        counts += torch.bincount(seg_of(taken, starts), minlength=num).double()
        gap -= len(taken)
        met += len(taken)
    if gap > 0 and not complete:
        return None
    if gap > 0 and lo < available:
        # the budget can be undershot only by a module that did not fit: if opening it lands
        # nearer to tau (above it), that is the nearest achievable count
        over, over_counts, over_structured = trainable_at(lo + 1)
        if over - tau < gap:
            return lo + 1, over, over_counts, over_structured, [order[:lo + 1]]
    return lo, met, counts, structured, chosen
