"""SPT step 2: where to tune under a parameter budget τ (SPT, He et al. ICCV 2023, Sec. 3.2).

1. Rank every scored entry by sensitivity; take the global top-t.
2. A weight matrix whose count of selected entries c reaches σ = (its structured module's parameter
   cost) / α is tuned *structurally* (LoRA-r or Adapter-r on that module); any other selected entry
   is tuned *unstructured* (a trainable delta on exactly that entry).
3. Vectors (biases, norm weights) and matrices no structured module can wrap (Swin's relative
   position bias table; for Adapter, modules whose output cannot be hooked — the fused attention
   of mmseg's ViT) are only ever tuned unstructured.

The trainable count ``Σ structured cost + Σ unstructured entries`` never decreases with t, so t is
the largest value whose count stays within τ (binary search). The remaining gap is then filled
with the next most sensitive entries that do not open a new structured module, which brings the
count to τ unless nothing is left to add (then t + 1 — one more structured module, above τ — is
taken if it lands nearer); the file records the budget asked, the budget met and whether they
agree within 1 %.

An allocation is saved as ``allocation.json`` (everything but the indices, human readable) plus
``allocation_indices.pth`` (plain int64 tensors: flat indices of the unstructured entries per
parameter; loads with ``weights_only=True``). Configs point at the JSON file.
"""
import json
import math
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import nn

from ..hooks import host_of, needs_reparam
from ..lora import in_out_features
from ..ssf import out_channels
from ..targets import find_table
from .sensitivity import scored_parameters
from ...fileio import atomic_save, atomic_write_text, load_checkpoint_file  # noqa: I100

KINDS = ('lora', 'adapter')
INDEX_FILE = 'allocation_indices.pth'
FORMAT_VERSION = 1
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


def structured_cost(module: nn.Module, kind: str, r: int) -> int:
    """Parameters of one LoRA-r (``r·(in + out)``) or Adapter-r (``2·out·r + r + out``) module."""
    if kind == 'lora':
        fan_in, fan_out = in_out_features(module)
        return r * (fan_in + fan_out)
    dim = out_channels(module)
    return 2 * dim * r + r + dim


def structured_candidate(backbone: nn.Module, modules: Dict[str, nn.Module], param_name: str,
                         kind: str) -> Optional[str]:
    """The module a structured ``kind`` unit would wrap for ``param_name``, or None."""
    owner_name, _, leaf = param_name.rpartition('.')
    owner = modules.get(owner_name)
    ok = ((isinstance(owner, nn.Linear) and leaf == 'weight')
          or (isinstance(owner, nn.MultiheadAttention) and leaf == 'in_proj_weight'))
    if not ok:
        return None
    if kind == 'adapter' and needs_reparam(host_of(backbone, owner_name), owner):
        return None  # its output is never seen by a hook (fused attention): no adapter there
    return owner_name


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
        alpha: σ divisor (paper default 10).
        structured: ``{module name: dict(param=, params=cost, sensitive=count)}``.
        unstructured: ``{param name: sorted int64 flat indices}``.
        budget: ``dict(asked=, met=, structured=, unstructured=, within_1pct=, note=)``.
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

    # -- files --------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Plain-type description (everything but the indices)."""
        return dict(version=FORMAT_VERSION, kind=self.kind, rank=self.rank, alpha=self.alpha,
                    budget=self.budget, backbone=self.backbone, sensitivity=self.sensitivity,
                    structured=self.structured,
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
                   sensitive_counts=info.get('sensitive_counts', {}), path=path)

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
        self.check_entries(backbone)

    def check_entries(self, backbone: nn.Module) -> None:
        """Raise ``ValueError`` naming the entry and the file if a structured entry is not a
        weight matrix its structured module can wrap (an unknown module, a bias, a norm), or an
        unstructured entry names an unknown parameter or an index outside it."""
        where = f'SPT allocation {self.path}' if self.path else 'SPT allocation'
        modules = dict(backbone.named_modules())
        params = scored_parameters(backbone)
        for name, entry in self.structured.items():
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


def allocate(scores: Dict[str, torch.Tensor], backbone: nn.Module, budget, kind: str = 'lora',
             rank: int = 8, alpha: float = 10.0) -> Allocation:
    """Allocate ``budget`` trainable parameters over ``backbone`` from sensitivity ``scores``.

    Args:
        scores: ``{param name: score tensor}`` from :func:`compute_sensitivity` (its keys are the
            tunable parameters; ties are broken by parameter order, then position).
        backbone: the (stock) backbone the scores belong to.
        budget: τ, a count or a string like ``'0.4M'``.
        kind: structured module, ``'lora'`` or ``'adapter'``.
        rank: r of the structured modules.
        alpha: σ = structured cost / alpha (paper default 10).

    Raises:
        ValueError: zero / negative budget, or a budget not smaller than the tunable parameters.
    """
    if kind not in KINDS:
        raise ValueError(f'SPT kind must be one of {KINDS}, got {kind!r}')
    if alpha < 1 or rank <= 0:
        # (alpha < 1 would make a structured module train fewer parameters than the entries it
        # replaces, and the trainable count would no longer grow with t)
        raise ValueError(f'SPT needs alpha >= 1 (paper: 10) and rank > 0, got alpha={alpha}, '
                         f'rank={rank}')
    tau = parse_budget(budget)
    names = list(scores)
    sizes = torch.tensor([scores[n].numel() for n in names], dtype=torch.long)
    total = int(sizes.sum())
    if tau >= total:
        raise ValueError(f'SPT budget {tau:,} is not smaller than the {total:,} parameters SPT can '
                         f'tune in this {type(backbone).__name__}: use FullFineTune instead, or a '
                         f'smaller budget')
    modules = dict(backbone.named_modules())
    owners = [structured_candidate(backbone, modules, n, kind) for n in names]
    eligible = torch.tensor([o is not None for o in owners])
    cost = torch.tensor([structured_cost(modules[o], kind, rank) if o else 0 for o in owners],
                        dtype=torch.float64)
    sigma = torch.where(eligible, cost / alpha, torch.full_like(cost, float('inf')))

    flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])
    starts = torch.cumsum(sizes, 0) - sizes
    k = max(4 * tau, MIN_PREFIX)
    while True:  # rank only a prefix (a full sort of a ViT-B's 85M scores is slow); grow if short
        order, complete = ranked_prefix(flat, k)
        seg = seg_of(order, starts)
        picked = _select(order, complete, seg, tau, cost, sigma, starts)
        if picked is not None:
            break
        k *= 4
    del flat
    lo, met, counts, structured, chosen = picked

    selected = torch.sort(torch.cat(chosen)).values
    sel_seg = seg_of(selected, starts)
    keep = ~structured[sel_seg]
    selected, sel_seg = selected[keep], sel_seg[keep]
    per_param = torch.bincount(sel_seg, minlength=len(names))
    unstructured, offset = {}, 0
    for i, name in enumerate(names):
        n = int(per_param[i])
        if n:
            unstructured[name] = (selected[offset:offset + n] - starts[i]).clone()
        offset += n
    structured_modules = {
        owners[i]: dict(param=names[i].rpartition('.')[2], params=int(cost[i]),
                        sensitive=int(counts[i])) for i in range(len(names)) if structured[i]}
    sensitive = sensitive_counts(order[:tau], seg[:tau], starts, names, backbone)
    n_struct = sum(v['params'] for v in structured_modules.values())
    n_unstruct = sum(int(v.numel()) for v in unstructured.values())
    assert n_struct + n_unstruct == met
    within = abs(met - tau) <= 0.01 * tau
    note = 'within 1% of the budget asked' if within else (
        'nearest achievable: every further entry would open a structured module beyond the '
        'budget, or nothing is left to tune')
    return Allocation(
        kind=kind, rank=rank, alpha=alpha, structured=structured_modules, unstructured=unstructured,
        budget=dict(asked=tau, met=met, structured=n_struct, unstructured=n_unstruct,
                    within_1pct=within, note=note, top_t=lo),
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
        if table.role_of(name.rpartition('.')[0]) == 'qkv':
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
    """Top-t plus the budget fill over a ranked prefix; None when the prefix is too short."""
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

    # Fill the rest with the next entries that stay unstructured (never open a new module).
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
