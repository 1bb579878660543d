"""Check a prepared VTAB-1k / FGVC folder before a table run: every task folder, every split
file, every listed image, every label, and each split's size against the community's
preparation — reporting every problem, not the first.

Used by ``tools/dataset_converters/check_benchmark_data.py`` and by the harness's
``--dry-run``. A split is read with the suite's own reader (:class:`mmssf.VTAB1k` /
:class:`mmssf.FGVC` use the same functions), which stops at the first bad line of a file, so
a damaged split reports one line per file.
"""
import os.path as osp
from typing import List, Optional, Sequence

from .suites import Suite

__all__ = ['find_data_problems', 'weights_problem']


def find_data_problems(suite: Suite, data_root: str, tasks: Optional[Sequence[str]] = None,
                       splits: Optional[Sequence[str]] = None,
                       check_sizes: bool = True) -> List[str]:
    """One line per problem of ``data_root`` (empty: the folder is ready).

    Args:
        suite: the benchmark (:data:`mmssf.benchmarks.SUITES`).
        data_root: the folder holding the task folders (VTAB-1k: the 19 task folders; FGVC:
            ``CUB_200_2011/``, ``NABirds/``, ...).
        tasks: the tasks to check (default: every task of the suite).
        splits: the splits to check (default: every split of the suite).
        check_sizes: compare each split's image count with the official preparation (off for
            subsets and the generated tiny folders).
    """
    if not osp.isdir(data_root):
        return [f'{suite.title} data root {data_root} does not exist (or is not a folder)']
    problems = []
    for task in tasks or suite.tasks:
        suite.check_task(task)
        root = suite.task_root(data_root, task)
        if not osp.isdir(root):
            problems.append(f'{suite.title} {task}: folder {root} does not exist')
            continue
        for split in splits or suite.all_splits:
            try:
                found = len(suite.reader(root, split, task))
            except (ValueError, FileNotFoundError, OSError) as err:
                problems.append(f'{suite.title} {task} {split}: {err}')
                continue
            if check_sizes and suite.split_size is not None:
                expected = suite.split_size(task, split)
                if found != expected:
                    problems.append(f'{suite.title} {task} {split}: {found:,} images, the '
                                    f'official preparation has {expected:,}')
    return problems


def weights_problem(checkpoint: Optional[str], how: str) -> Optional[str]:
    """A line naming the missing pretrained file and ``how`` to make it, or None when it
    exists (or is a URL, or there is none)."""
    if not checkpoint or '://' in str(checkpoint) or osp.isfile(checkpoint):
        return None
    return f'pretrained weights {checkpoint} do not exist: {how}'
