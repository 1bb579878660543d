"""The papers' benchmarks (VTAB-1k, FGVC): suite tables, per-task recipes, published results,
per-run configs and the result table. ``tools/benchmarks/run_table.py`` drives them."""
from .recipes import Recipe, load_recipes
from .papers import PaperRow, load_paper_results
from .suites import SUITES, Suite, get_suite, run_config
from .report import ResultTable, averages

__all__ = ['Recipe', 'load_recipes', 'PaperRow', 'load_paper_results', 'SUITES', 'Suite',
           'get_suite', 'run_config', 'ResultTable', 'averages']
