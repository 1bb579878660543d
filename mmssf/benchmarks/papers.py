"""Published results as data: ``configs/<suite>/paper_results.csv``.

One row per method: the per-task top-1 accuracies copied from a paper's table, the mean that
table prints and its convention (``tasks``: mean of the tasks; ``groups``: mean of the group
means — the papers mix the two), group means where the table prints them, and the source
(paper, table, row). Lines starting with ``#`` are comments.
"""
import csv
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

CONVENTIONS = ('tasks', 'groups')


@dataclass(frozen=True)
class PaperRow:
    method: str
    accuracy: Dict[str, Optional[float]]  # task -> top-1 (%), None where the table has no value
    mean_reported: float
    mean_convention: str
    groups_reported: Dict[str, Optional[float]]
    source: str


def _float(text: str, where: str, name: str) -> Optional[float]:
    text = (text or '').strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f'{where}: {name} must be a number or empty, got {text!r}') from None


def load_paper_results(path: str, tasks: Sequence[str],
                       groups: Sequence[str] = ()) -> Dict[str, PaperRow]:
    """``{method: PaperRow}``; errors name the file and line."""
    with open(path, newline='') as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if not line.lstrip().startswith('#')
                 and line.strip()]
    reader = csv.DictReader([line for _, line in lines])
    fields = reader.fieldnames or []
    missing = [t for t in tasks if t not in fields]
    if missing:
        raise ValueError(f'{path}: no column for {", ".join(missing)}')
    out = {}
    for i, row in enumerate(reader):
        where = f'{path}:{lines[i + 1][0]}'
        if row['mean_convention'] not in CONVENTIONS:
            raise ValueError(f'{where}: mean_convention must be one of {", ".join(CONVENTIONS)}')
        out[row['method']] = PaperRow(
            method=row['method'],
            accuracy={t: _float(row[t], where, t) for t in tasks},
            mean_reported=_float(row['mean_reported'], where, 'mean_reported'),
            mean_convention=row['mean_convention'],
            groups_reported={g: _float(row.get(f'{g.lower()}_reported'), where, g)
                             for g in groups},
            source=row['source'])
    return out
