"""Per-task training recipes as data: ``configs/<suite>/recipes.csv``.

One row per (method, task) — or task ``*`` for every task of the suite — with the learning rate,
weight decay, drop-path, epochs, total batch size, warm-up epochs, optimizer, augmentation,
weight EMA, the candidate grids of the ``val`` protocol and the method options the source sets
per task (``peft_options``: ``key=value`` pairs, space separated, written into the method
config's ``model.backbone.peft``, e.g. SNELL's rank and sparsity ``r=32 sparsity=0.9``), plus
the ``source`` the values were read from (an official script, or "our choice: ..." where none
exists). A task row wins over the ``*`` row of its method. Lines starting with ``#`` are comments.
"""
import ast
import csv
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

OPTIMIZERS = ('adamw', 'sgd')
COLUMNS = ('method', 'task', 'lr', 'weight_decay', 'drop_path', 'epochs', 'batch_size',
           'warmup_epochs', 'optimizer', 'train_aug', 'ema_decay', 'lr_grid', 'wd_grid',
           'peft_options', 'source')


@dataclass(frozen=True)
class Recipe:
    """The training recipe of one method on one task (values as the source states them)."""
    method: str
    task: str
    lr: float
    weight_decay: float
    drop_path: float
    epochs: int
    batch_size: int  # total over all processes
    warmup_epochs: int
    optimizer: str
    train_aug: str
    ema_decay: Optional[float]
    lr_grid: Tuple[float, ...] = field(default=())
    wd_grid: Tuple[float, ...] = field(default=())
    # ((option, value), ...) for the method config's model.backbone.peft
    peft_options: Tuple[Tuple[str, object], ...] = field(default=())
    source: str = ''

    def to_dict(self) -> dict:
        out = asdict(self)
        out['lr_grid'], out['wd_grid'] = list(self.lr_grid), list(self.wd_grid)
        out['peft_options'] = dict(self.peft_options)
        return out

    def candidates(self) -> List[Tuple[float, float]]:
        """``(lr, weight_decay)`` pairs the ``val`` protocol chooses from."""
        return [(lr, wd) for lr in (self.lr_grid or (self.lr, ))
                for wd in (self.wd_grid or (self.weight_decay, ))]


def _number(text: str, kind, where: str, name: str):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f'{where}: {name} must be a {kind.__name__}, got {text!r}') from None


def _grid(text: str, where: str, name: str) -> Tuple[float, ...]:
    return tuple(_number(v, float, where, name) for v in text.split())


def _options(text: str, where: str) -> Tuple[Tuple[str, object], ...]:
    """``'r=32 sparsity=0.9'`` -> ``(('r', 32), ('sparsity', 0.9))`` (values: Python literals)."""
    out = {}
    for item in text.split():
        key, sep, value = item.partition('=')
        if not sep or not key.isidentifier():
            raise ValueError(f'{where}: peft_options must be key=value pairs separated by '
                             f'spaces, got {item!r}')
        if key in out:
            raise ValueError(f'{where}: peft_options sets {key!r} twice')
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f'{where}: peft_options {key}={value!r} is not a number, '
                             'True / False or a quoted string') from None
    return tuple(out.items())


def read_recipe_rows(path: str) -> List[Tuple[int, dict]]:
    """``[(line number, row)]`` of a recipe CSV (comment lines skipped)."""
    with open(path, newline='') as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if not line.lstrip().startswith('#')
                 and line.strip()]
    reader = csv.DictReader([line for _, line in lines])
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f'{path}: the header must be {",".join(COLUMNS)}, got '
                         f'{",".join(reader.fieldnames or ())}')
    rows = list(reader)
    return [(lines[i + 1][0], row) for i, row in enumerate(rows)]


def load_recipes(path: str, tasks: Sequence[str],
                 train_augs: Sequence[str]) -> Dict[str, Dict[str, Recipe]]:
    """``{method: {task: Recipe}}`` for every task of the suite, ``*`` rows expanded.

    Errors name the file and line: an unknown task, a duplicate row, a value that is not a
    number, an unknown optimizer or augmentation, malformed peft_options, an empty source.
    (Whether the method takes those options is checked where its config is built.)
    """
    explicit: Dict[Tuple[str, str], Recipe] = {}
    for number, row in read_recipe_rows(path):
        where = f'{path}:{number}'
        if None in row or any(v is None for v in row.values()):
            raise ValueError(f'{where}: expected {len(COLUMNS)} comma-separated columns')
        method, task = row['method'].strip(), row['task'].strip()
        if task != '*' and task not in tasks:
            raise ValueError(f'{where}: unknown task {task!r}; tasks are {", ".join(tasks)}, or *')
        if (method, task) in explicit:
            raise ValueError(f'{where}: a second row for method {method!r}, task {task!r}')
        if row['optimizer'] not in OPTIMIZERS:
            raise ValueError(f'{where}: optimizer must be one of {", ".join(OPTIMIZERS)}')
        if row['train_aug'] not in train_augs:
            raise ValueError(f'{where}: train_aug must be one of {", ".join(train_augs)}')
        if not row['source'].strip():
            raise ValueError(f'{where}: every row needs its source')
        explicit[(method, task)] = Recipe(
            method=method, task=task,
            lr=_number(row['lr'], float, where, 'lr'),
            weight_decay=_number(row['weight_decay'], float, where, 'weight_decay'),
            drop_path=_number(row['drop_path'], float, where, 'drop_path'),
            epochs=_number(row['epochs'], int, where, 'epochs'),
            batch_size=_number(row['batch_size'], int, where, 'batch_size'),
            warmup_epochs=_number(row['warmup_epochs'], int, where, 'warmup_epochs'),
            optimizer=row['optimizer'], train_aug=row['train_aug'],
            ema_decay=_number(row['ema_decay'], float, where, 'ema_decay')
            if row['ema_decay'].strip() else None,
            lr_grid=_grid(row['lr_grid'], where, 'lr_grid'),
            wd_grid=_grid(row['wd_grid'], where, 'wd_grid'),
            peft_options=_options(row['peft_options'], where),
            source=row['source'].strip())
    table: Dict[str, Dict[str, Recipe]] = {}
    for method in dict.fromkeys(m for m, _ in explicit):
        per_task = {}
        for task in tasks:
            recipe = explicit.get((method, task)) or explicit.get((method, '*'))
            if recipe is not None:
                per_task[task] = Recipe(**dict(asdict(recipe), task=task,
                                               lr_grid=recipe.lr_grid, wd_grid=recipe.wd_grid,
                                               peft_options=recipe.peft_options))
        table[method] = per_task
    return table
