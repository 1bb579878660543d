"""Where the sensitive parameters are: per block and per operation (the SPT paper's Figure 4)."""
import re
from collections import OrderedDict
from typing import Dict, Tuple

from ..targets import TargetTable

#: operation label of each target-table role (norms and merging grouped)
OPERATIONS = OrderedDict([
    ('qkv', ('W_q', 'W_k', 'W_v')), ('proj', 'W_o'), ('fc1', 'W_fc1'), ('fc2', 'W_fc2'),
    ('norm1', 'norms'), ('norm2', 'norms'), ('final_norm', 'norms'), ('out_norm', 'norms'),
    ('merge_norm', 'patch merging'), ('merge_reduction', 'patch merging'),
])


def block_index(param_name: str, block_order: Dict[str, int]):
    """Block key of a parameter: ``layers.i`` (ViT) or ``stages.s.blocks.b`` (Swin), or None."""
    match = re.match(r'(layers\.\d+|stages\.\d+\.blocks\.\d+)\.', param_name)
    if not match:
        return None
    return block_order.setdefault(match.group(1), len(block_order))


def patterns(counts: Dict[str, object], table: TargetTable) -> Tuple[Dict[int, int], Dict[str, int]]:
    """``(per block, per operation)`` counts of sensitive entries from
    :attr:`Allocation.sensitive_counts`; blocks are numbered in network order."""
    per_block, per_op, order = {}, {}, {}
    for name, count in counts.items():
        total = sum(count) if isinstance(count, list) else count
        block = block_index(name, order)
        block = 'other' if block is None else block
        per_block[block] = per_block.get(block, 0) + total
        label = OPERATIONS.get(table.role_of(name.rpartition('.')[0]), 'other')
        if isinstance(label, tuple):
            parts = count if isinstance(count, list) else [count, 0, 0]
            for lab, part in zip(label, parts):
                per_op[lab] = per_op.get(lab, 0) + part
        else:
            per_op[label] = per_op.get(label, 0) + total
    canonical = ['W_q', 'W_k', 'W_v', 'W_o', 'W_fc1', 'W_fc2', 'norms', 'patch merging', 'other']
    return per_block, {k: per_op[k] for k in canonical if k in per_op}


def _share(part, whole):
    return 100.0 * part / whole if whole else 0.0


def _blocks(structured) -> str:
    """``'3 q, 1 k, 2 v blocks, 5 whole matrices'``."""
    counts = {}
    for name in structured:
        block = name.rpartition(':')[2] if ':' in name else 'whole'
        counts[block] = counts.get(block, 0) + 1
    parts = [f'{counts[b]} {b}' for b in ('q', 'k', 'v') if b in counts]
    text = ', '.join(parts) + (' blocks' if parts else '')
    if 'whole' in counts:
        text += (', ' if parts else '') + f'{counts["whole"]} whole matrices'
    return text or 'none'


def format_summary(alloc, table: TargetTable) -> str:
    """The summary table printed by ``spt_sensitivity.py``."""
    b = alloc.budget
    lines = [
        f'SPT-{alloc.kind} allocation for {alloc.backbone["table"]} '
        f'(rank {alloc.rank}, alpha {alloc.alpha:g})',
        f'budget asked {b["asked"]:,} | met {b["met"]:,} ({b["note"]})',
        f'  structured   {b["structured"]:>10,} params in {len(alloc.structured)} modules '
        f'({_blocks(alloc.structured)})',
        f'  whole vectors{b.get("vectors", 0):>10,} params in {len(alloc.vectors)} vectors '
        f'(beta {alloc.beta})',
        f'  unstructured {b["unstructured"]:>10,} params in {len(alloc.unstructured)} tensors',
        f'  class token  {b.get("cls_token", 0):>10,} params'
        + ('' if alloc.cls_token else ' (frozen or none)'),
    ]
    if alloc.sensitivity:
        s = alloc.sensitivity
        lines.append(f'sensitivity: {s.get("samples")} samples ({s.get("samples_asked")} asked), '
                     f'{s.get("batches")} batches, seed {s.get("seed")}')
        if s.get('pipeline'):
            steps = ' -> '.join(t.get('type', '?') for t in s['pipeline'] if isinstance(t, dict))
            loss = s.get('loss', {}).get('used')
            lines.append(f'  fed: {s.get("data")} ({steps}); batch augments removed: '
                         f'{", ".join(s.get("batch_augments_removed") or []) or "none"}; '
                         f'loss: {loss if isinstance(loss, str) else "as configured"}')
    per_block, per_op = patterns(alloc.sensitive_counts, table)
    whole = sum(per_block.values())
    lines.append(f'share of the top-{b["asked"]:,} sensitive parameters per block:')
    lines += [f'  block {k!s:>5}: {v:>10,} ({_share(v, whole):5.1f}%)' for k, v in per_block.items()]
    lines.append('per operation:')
    lines += [f'  {k:>13}: {v:>10,} ({_share(v, whole):5.1f}%)' for k, v in per_op.items()]
    if alloc.structured:
        lines.append('structured modules:')
        lines += [f'  {name} ({v["param"]}): {v["params"]:,} params, {v["sensitive"]:,} sensitive'
                  for name, v in alloc.structured.items()]
    if alloc.vectors:
        lines.append('vectors tuned whole:')
        lines += [f'  {name}: {v["params"]:,} params, {v["sensitive"]:,} sensitive'
                  for name, v in alloc.vectors.items()]
    return '\n'.join(lines)


def plot_patterns(alloc, table: TargetTable, path: str) -> str:
    """PNG with the share of sensitive parameters per block and per operation."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    per_block, per_op = patterns(alloc.sensitive_counts, table)
    whole = sum(per_block.values()) or 1
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6))
    top.bar([str(k) for k in per_block], [100 * v / whole for v in per_block.values()],
            color='tab:blue')
    top.set_xlabel('block')
    top.set_ylabel('% of sensitive params')
    top.set_title(f'{alloc.backbone["table"]}: top-{alloc.budget["asked"]:,} sensitive parameters')
    bottom.bar(list(per_op), [100 * v / whole for v in per_op.values()], color='tab:orange')
    bottom.set_ylabel('% of sensitive params')
    bottom.set_xlabel('operation')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
