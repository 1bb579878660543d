"""The result table: our accuracy per task beside the paper's, the difference, the trainable
parameters, and both averages the papers use — the mean of the tasks (SSF, RLRR) and the mean
of the group means (SPT, NOAH) — computed for ours and for the paper's numbers over the same
tasks, plus the mean the paper itself prints.
"""
import csv
import io
from dataclasses import dataclass
from statistics import mean
from typing import Dict, List, Optional, Sequence

from .papers import PaperRow
from .suites import Suite


def averages(values: Dict[str, Optional[float]], suite: Suite,
             tasks: Sequence[str]) -> Dict[str, Optional[float]]:
    """``{'group:<G>': mean of G's tasks, 'tasks': mean of tasks, 'groups': mean of group
    means}`` over ``tasks``; None where a value of those tasks is missing."""
    out = {}
    group_means = []
    for group in suite.groups:
        members = [t for t in tasks if suite.group_of[t] == group]
        if not members:
            continue
        vals = [values.get(t) for t in members]
        out[f'group:{group}'] = mean(vals) if None not in vals else None
        group_means.append(out[f'group:{group}'])
    vals = [values.get(t) for t in tasks]
    out['tasks'] = mean(vals) if vals and None not in vals else None
    out['groups'] = mean(group_means) if group_means and None not in group_means else None
    return out


def _fmt(value, digits=2):
    return '—' if value is None else f'{value:.{digits}f}'


def _diff(ours, paper):
    return None if ours is None or paper is None else ours - paper


@dataclass
class Row:
    label: str
    group: str
    ours: Optional[float]
    paper: Optional[float]
    params: Optional[int] = None
    note: str = ''

    @property
    def diff(self):
        return _diff(self.ours, self.paper)


class ResultTable:
    """Rows of one (suite, method, protocol) run over ``tasks`` (finished or not)."""

    def __init__(self, suite: Suite, method: str, protocol: str, tasks: Sequence[str],
                 results: Dict[str, dict], paper: Optional[PaperRow]):
        self.suite, self.method, self.protocol = suite, method, protocol
        self.tasks, self.results, self.paper = list(tasks), results, paper

    def rows(self) -> List[Row]:
        ours = {t: self.results[t]['accuracy'] for t in self.tasks if t in self.results}
        theirs = self.paper.accuracy if self.paper else {}
        rows = []
        for task in self.tasks:
            result = self.results.get(task, {})
            note = result.get('evaluated', 'not run yet' if not result else '')
            if result.get('spt_budget'):  # (SPT: which budget, chosen how: budget_note)
                note += f'; SPT budget {result["spt_budget"]}'
            rows.append(Row(self.suite.labels[task], self.suite.group_of[task], ours.get(task),
                            theirs.get(task), result.get('trainable_params'), note))
        done = [t for t in self.tasks if t in ours]
        mine, paper = averages(ours, self.suite, done), averages(theirs, self.suite, done)
        n_groups = 0
        for group in self.suite.groups:
            key = f'group:{group}'
            if key in mine and len(self.suite.groups) > 1:
                size = sum(self.suite.group_of[t] == group for t in self.suite.tasks)
                have = sum(self.suite.group_of[t] == group for t in done)
                rows.append(Row(f'{group} mean ({have}/{size})', group, mine[key],
                                paper[key] if paper[key] is not None or have < size
                                else self._printed_group(group)))
                n_groups += 1
        if done:
            complete = len(done) == len(self.suite.tasks)
            rows.append(Row(f'mean of {len(done)} tasks', '', mine['tasks'],
                            self._printed(paper['tasks'], 'tasks', complete)))
            rows.append(Row(f'mean of {n_groups or 1} group means', '', mine['groups'],
                            self._printed(paper['groups'], 'groups', complete)))
        return rows

    # (a paper row without per-task numbers: the means the paper prints stand in, but only
    # where the run covers the whole group / suite those means are over)
    def _printed_group(self, group: str) -> Optional[float]:
        return self.paper.groups_reported.get(group) if self.paper else None

    def _printed(self, computed, convention, complete) -> Optional[float]:
        if computed is not None or not complete or self.paper is None:
            return computed
        return self.paper.mean_reported if self.paper.mean_convention == convention else None

    def paper_note(self) -> str:
        if self.paper is None:
            return f'No published {self.suite.title} numbers for {self.method} in the tables.'
        convention = ('the mean of the tasks' if self.paper.mean_convention == 'tasks'
                      else 'the mean of the group means')
        groups = ', '.join(f'{g} {v:.1f}' for g, v in self.paper.groups_reported.items()
                           if v is not None)
        missing = [t for t, v in self.paper.accuracy.items() if v is None]
        text = (f'Paper: {self.paper.source}; it reports {self.paper.mean_reported:.2f} as '
                f'{convention}' + (f' (groups: {groups})' if groups else '') + '.')
        if missing:
            text += (f' No per-task value for {", ".join(missing)}: averages that need it are '
                     'left blank on the paper side, except the means the paper prints, shown '
                     'where the run covers their whole group or all tasks.')
        return text

    def budget_note(self) -> str:
        """SPT: where each task's budget came from (val selection or the fixed official one)."""
        sources = dict.fromkeys(r['spt_budget_source'] for r in self.results.values()
                                if r.get('spt_budget_source'))
        return ''.join(f'SPT budget: {source}.\n' for source in sources)

    def markdown(self) -> str:
        head = (f'### {self.suite.title}: {self.method} (protocol: {self.protocol})\n\n'
                '| task | group | ours | paper | diff | trainable params (M) | evaluated |\n'
                '|---|---|---:|---:|---:|---:|---|\n')
        lines = []
        for row in self.rows():
            params = '' if row.params is None else f'{row.params / 1e6:.3f}'
            diff = '' if row.diff is None else f'{row.diff:+.2f}'
            lines.append(f'| {row.label} | {row.group} | {_fmt(row.ours)} | {_fmt(row.paper)} | '
                         f'{diff} | {params} | {row.note} |')
        budget = self.budget_note()
        return (head + '\n'.join(lines) + '\n\n' + self.paper_note() + '\n'
                + ('\n' + budget if budget else ''))

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator='\n')
        writer.writerow(['suite', 'method', 'protocol', 'row', 'group', 'ours', 'paper', 'diff',
                         'trainable_params', 'evaluated'])
        for row in self.rows():
            writer.writerow([self.suite.name, self.method, self.protocol, row.label, row.group,
                             '' if row.ours is None else f'{row.ours:.4f}',
                             '' if row.paper is None else f'{row.paper:.4f}',
                             '' if row.diff is None else f'{row.diff:.4f}',
                             '' if row.params is None else row.params, row.note])
        return out.getvalue()
