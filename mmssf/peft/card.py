"""A method card: what the config zoo, the benchmark suites, the tests and the benchmarks know of
one method, declared once on its class (``card = MethodCard(...)``) and read from the registry
(:mod:`mmssf.peft.registry_facts`) — never kept in hand-written lists beside the method.
"""
from dataclasses import dataclass
from typing import Tuple

#: the benchmark suites a method may join (mmssf.benchmarks.suites.SUITES)
SUITE_NAMES = ('vtab1k', 'fgvc')


@dataclass(frozen=True)
class MethodCard:
    """Args:
        zoo: the config-name prefix of the method's zoo configs (``configs/<folder>/<zoo>_*.py``
            and ``configs/<suite>/<zoo>_*.py``); empty: the method has no zoo configs.
        folder: the zoo folder (``configs/<folder>/``); several methods may share one
            (``vpt``: VPT-shallow and VPT-deep).
        suites: the benchmark suites (:data:`SUITE_NAMES`) the method joins; each needs a config
            in ``configs/<suite>/`` and sourced rows in that suite's ``recipes.csv``.
        count: the trainable-parameter count's formula or its published reference (checked by
            ``tests/test_param_counts.py``).
        label: the method's name in benchmark tables.
    """
    zoo: str = ''
    folder: str = ''
    suites: Tuple[str, ...] = ()
    count: str = ''
    label: str = ''

    def __post_init__(self):
        unknown = [s for s in self.suites if s not in SUITE_NAMES]
        if unknown:
            raise ValueError(f'MethodCard: unknown suites {unknown}; the suites are '
                             f'{", ".join(SUITE_NAMES)}')
        if self.zoo and not self.folder:
            raise ValueError(f'MethodCard {self.zoo!r}: a zoo prefix needs its folder')
        if self.suites and not self.zoo:
            raise ValueError('MethodCard: a method joins a suite through its zoo configs; set zoo')
