"""SPT's trainable-parameter budget per task, for the two protocols of ``run_table.py``.

What the official code states (ziplab/SPT):

* ``configs/vtab_supervised_spt_lora.sh`` and ``configs/vtab_supervised_spt_adapter.sh`` (and
  their MAE / MoCo twins) train *every* VTAB-1k task at every budget of
  ``for GM in param_req_1.0 param_req_0.8 param_req_0.6 param_req_0.4 param_req_0.2`` (their
  released allocations ``sensitivity_spt_supervised_*_a10/<task>/param_req_<b>.pth`` are τ = b M
  parameters), testing on the test split with ``--test``;
* ``README.md``: "we sweep different trainable parameter budgets to seek potential better
  results (from 0.2M to 1.0M)".

No file states which budget each reported task result used (the paper's Tables 9 / 10 give one
mean fraction per row, e.g. SPT-LoRA 0.31 % and 0.63 %): the published numbers come from a
per-task choice among the five budgets, made on test. Hence:

* ``val`` protocol: the budget is one more grid, :data:`OFFICIAL_GRID` (the official sweep) by
  default, chosen with lr / wd on val200 (FGVC: val) — the official choice, moved off test;
* ``official`` protocol: no per-task budget exists to follow (:data:`OFFICIAL_PER_TASK` is
  empty), so one fixed budget (``--spt-budget``, default :data:`DEFAULT_BUDGET`: the budget of the
  paper's sensitivity figures 4-8) for every task, with this reason in the table.
"""
from typing import Dict, Tuple

#: the official sweep (configs/vtab_supervised_spt_{lora,adapter}.sh ``param_req_*``), ascending
OFFICIAL_GRID: Tuple[str, ...] = ('0.2M', '0.4M', '0.6M', '0.8M', '1.0M')
#: the budget of the paper's sensitivity figures (Figs. 4-8: "under 0.4M trainable parameters")
DEFAULT_BUDGET = '0.4M'
#: per-task budgets the official scripts state: none (see the module docstring)
OFFICIAL_PER_TASK: Dict[str, str] = {}
GRID_SOURCE = ('ziplab/SPT configs/vtab_supervised_spt_lora.sh / _adapter.sh sweep '
               'param_req_{0.2,0.4,0.6,0.8,1.0} (0.2M-1.0M, README) on every task')
FIXED_SOURCE = ('fixed: the official scripts state no per-task budget (they sweep 0.2M-1.0M on '
                'every task and report a choice made on test)')


def official_budget(task: str, fixed: str = DEFAULT_BUDGET) -> Tuple[str, str]:
    """``(budget, source)`` of ``task`` under the ``official`` protocol."""
    if task in OFFICIAL_PER_TASK:
        return OFFICIAL_PER_TASK[task], 'official per-task budget'
    return fixed, FIXED_SOURCE
