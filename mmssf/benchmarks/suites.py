"""The two suites (VTAB-1k, FGVC) and the per-run config: a method config of
``configs/<suite>/`` with one task, split pair and recipe applied.

A run config is written out in full (``Config.dump``) by the harness, so every number a run
used is in its work directory; nothing is templated into the zoo configs themselves.
"""
import copy
import os
import os.path as osp
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

from ..datasets.fgvc import FGVC_DATASETS, FGVC_SPLITS, fgvc_split_size, read_fgvc_split
from ..datasets.vtab import (VTAB1K_GROUPS, VTAB1K_SPLITS, VTAB1K_TASKS, read_vtab1k_list,
                             vtab1k_split_size)
from ..peft.registry_facts import suite_methods, zoo_methods
from .recipes import Recipe

_PACKAGE = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: where the zoo's configs/ may be, in order: ``$MMSSF_CONFIGS``; the source checkout the package
#: is imported from (editable installs, the repository itself); the copy a wheel ships inside the
#: package (``mmssf/.mim/configs``, OpenMMLab's mim layout, written by ``setup.py``)
CONFIG_CANDIDATES = tuple(p for p in (os.environ.get('MMSSF_CONFIGS'),
                                      osp.join(osp.dirname(_PACKAGE), 'configs'),
                                      osp.join(_PACKAGE, '.mim', 'configs')) if p)


def find_config_root() -> str:
    """The first of :data:`CONFIG_CANDIDATES` that holds the suites' recipe tables (else the
    checkout's path, which the first file access then names as missing)."""
    for root in CONFIG_CANDIDATES:
        if osp.isfile(osp.join(root, 'vtab1k', 'recipes.csv')):
            return root
    return osp.join(osp.dirname(_PACKAGE), 'configs')


#: the zoo's configs/ folder (recipe and paper tables live beside the configs)
CONFIG_ROOT = find_config_root()
#: the methods of the suites, from their method cards (``card.suites``); a method config is
#: ``<method>_<stock config name>`` with ``<method>`` the card's zoo prefix
METHODS = tuple(dict.fromkeys(suite_methods('vtab1k') + suite_methods('fgvc')))
#: how to make the ImageNet-21k ViT-B/16 file both suites' configs load (``pretrained``)
PRETRAINED_HOW = ('convert the ImageNet-21k ViT-B/16 of the papers (Google\'s ViT-B_16.npz, '
                  'https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz, or its '
                  'timm .pth) with `python tools/model_converters/vit_timm_to_mm.py ViT-B_16.npz '
                  '{checkpoint} --target mmpretrain`, or point --cfg-options '
                  'model.backbone.init_cfg.checkpoint=FILE at a converted file')
MERGEABLE = tuple(m for m in METHODS if zoo_methods()[m].mergeable)


@dataclass(frozen=True)
class Suite:
    """A benchmark: its tasks, groups, splits per protocol, data layout and table files."""
    name: str
    title: str
    tasks: Tuple[str, ...]
    groups: Tuple[str, ...]
    group_of: Dict[str, str]
    classes: Dict[str, int]
    labels: Dict[str, str]
    train_augs: Tuple[str, ...]
    # protocol -> (train split, eval split); 'select' = the val protocol's model-selection runs
    splits: Dict[str, Tuple[str, str]]
    stock_config_name: str
    folder_of: Callable[[str], str]
    reader: Callable[..., list]
    # every split a prepared folder holds, and its size in the community's preparation
    all_splits: Tuple[str, ...] = ()
    split_size: Optional[Callable[[str, str], int]] = None

    @property
    def config_dir(self) -> str:
        return osp.join(CONFIG_ROOT, self.name)

    @property
    def recipes_file(self) -> str:
        return osp.join(self.config_dir, 'recipes.csv')

    @property
    def papers_file(self) -> str:
        return osp.join(self.config_dir, 'paper_results.csv')

    def method_config(self, method: str) -> str:
        return osp.join(self.config_dir, f'{method}_{self.stock_config_name}')

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            noun = 'task' if self.name == 'vtab1k' else 'dataset'
            raise ValueError(f'unknown {self.title} {noun} {task!r}; the {len(self.tasks)} are: '
                             f'{", ".join(self.tasks)}')

    def task_root(self, data_root: str, task: str) -> str:
        return osp.join(data_root, self.folder_of(task))

    def check_data(self, data_root: str, task: str, splits: Sequence[str]) -> Dict[str, int]:
        """Read and check the split files (labels, images) a run needs; ``{split: images}``."""
        self.check_task(task)
        root = self.task_root(data_root, task)
        if not osp.isdir(root):
            raise FileNotFoundError(f'{self.title} {task!r}: folder {root} does not exist '
                                    f'(--data-root {data_root})')
        return {split: len(self.reader(root, split, task)) for split in splits}

    def set_dataset(self, dataset: dict, data_root: str, task: str, split: str) -> None:
        """Point a dataset config (stock or mmssf class) at one task and split."""
        dataset['data_root'] = self.task_root(data_root, task)
        if self.name == 'vtab1k':
            dataset['ann_file'] = f'{split}.txt'
        else:
            dataset['dataset'], dataset['split'] = task, split


def _vtab_reader(root, split, task):
    return read_vtab1k_list(root, split, VTAB1K_TASKS[task][0])


def _fgvc_reader(root, split, task):
    info = FGVC_DATASETS[task]
    return read_fgvc_split(root, split, info['num_classes'], info['img_dir'])


VTAB1K = Suite(
    name='vtab1k', title='VTAB-1k', tasks=tuple(VTAB1K_TASKS), groups=VTAB1K_GROUPS,
    group_of={t: g for t, (_, g) in VTAB1K_TASKS.items()},
    classes={t: c for t, (c, _) in VTAB1K_TASKS.items()},
    labels={t: t for t in VTAB1K_TASKS}, train_augs=('none', 'flip'),
    splits=dict(official=('train800val200', 'test'), select=('train800', 'val200')),
    stock_config_name='vit-base-p16_in21k-pre_vtab1k.py',
    folder_of=lambda task: task, reader=_vtab_reader, all_splits=VTAB1K_SPLITS,
    split_size=vtab1k_split_size)
FGVC = Suite(
    name='fgvc', title='FGVC', tasks=tuple(FGVC_DATASETS), groups=('FGVC', ),
    group_of={t: 'FGVC' for t in FGVC_DATASETS},
    classes={t: d['num_classes'] for t, d in FGVC_DATASETS.items()},
    labels={t: d['name'] for t, d in FGVC_DATASETS.items()},
    train_augs=('rrc_flip', 'resize_crop_flip'),
    splits=dict(official=('trainval', 'test'), select=('train', 'val')),
    stock_config_name='vit-base-p16_in21k-pre_fgvc.py',
    folder_of=lambda task: FGVC_DATASETS[task]['folder'], reader=_fgvc_reader,
    all_splits=FGVC_SPLITS, split_size=fgvc_split_size)
SUITES = {s.name: s for s in (VTAB1K, FGVC)}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f'unknown suite {name!r}; suites are {", ".join(SUITES)}')
    return SUITES[name]


def _schedule(recipe: Recipe) -> list:
    """Linear warm-up (from lr * 1e-4) then cosine to 1e-8, per iteration, as the scripts."""
    steps = []
    if recipe.warmup_epochs:
        steps.append(dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0,
                          end=recipe.warmup_epochs, convert_to_iter_based=True))
    steps.append(dict(type='CosineAnnealingLR', eta_min=1e-8, by_epoch=True,
                      begin=recipe.warmup_epochs, end=recipe.epochs,
                      convert_to_iter_based=True))
    return steps


def run_config(cfg, suite: Suite, task: str, data_root: str, train_split: str, eval_split: str,
               recipe: Optional[Recipe] = None, lr: Optional[float] = None,
               weight_decay: Optional[float] = None, world_size: int = 1,
               spt_allocation: Optional[str] = None):
    """Apply one task (data, class count), split pair and — for training — recipe to ``cfg``.

    ``cfg`` is a method config of ``configs/<suite>/`` (or its stock config, for evaluating a
    merged checkpoint: then ``recipe`` is None and only data and classes are set). Training runs
    have no validation loop: a run is scored once, by ``tools/test.py`` on ``eval_split`` after
    its last epoch — never by its best epoch on the test split.
    """
    suite.check_task(task)
    num_classes = suite.classes[task]
    cfg.model.head.num_classes = num_classes
    if cfg.get('data_preprocessor') is not None:
        cfg.data_preprocessor.num_classes = num_classes
    if cfg.model.get('data_preprocessor') is not None:
        cfg.model.data_preprocessor.num_classes = num_classes
    suite.set_dataset(cfg.train_dataloader.dataset, data_root, task, train_split)
    suite.set_dataset(cfg.test_dataloader.dataset, data_root, task, eval_split)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    if recipe is None:
        return cfg

    if recipe.train_aug not in cfg.train_pipelines:
        raise KeyError(f'the config has no train_pipelines[{recipe.train_aug!r}] '
                       f'(it has {", ".join(cfg.train_pipelines)})')
    cfg.train_dataloader.dataset.pipeline = copy.deepcopy(cfg.train_pipelines[recipe.train_aug])
    if recipe.batch_size % world_size:
        raise ValueError(f'the recipe batch size {recipe.batch_size} does not divide over '
                         f'{world_size} processes')
    cfg.train_dataloader.batch_size = recipe.batch_size // world_size
    cfg.auto_scale_lr = dict(base_batch_size=recipe.batch_size)
    cfg.model.backbone.drop_path_rate = recipe.drop_path
    lr = recipe.lr if lr is None else lr
    weight_decay = recipe.weight_decay if weight_decay is None else weight_decay
    if recipe.optimizer == 'sgd':
        cfg.optim_wrapper.optimizer = dict(type='SGD', lr=lr, momentum=0.9,
                                           weight_decay=weight_decay)
    else:
        cfg.optim_wrapper.optimizer.update(type='AdamW', lr=lr, weight_decay=weight_decay)
    cfg.param_scheduler = _schedule(recipe)
    cfg.train_cfg = dict(by_epoch=True, max_epochs=recipe.epochs)
    hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') != 'EMAHook']
    if recipe.ema_decay is not None:
        # timm ModelEmaV2: ema = decay * ema + (1 - decay) * model, after every step
        hooks.append(dict(type='EMAHook', momentum=1 - recipe.ema_decay, update_buffers=True,
                          priority='ABOVE_NORMAL'))
    cfg.custom_hooks = hooks
    if recipe.peft_options:
        peft = cfg.model.backbone.get('peft')
        if peft is None:
            raise KeyError(f'recipe {recipe.method}/{task} sets peft_options '
                           f'{dict(recipe.peft_options)} but the config has no '
                           'model.backbone.peft')
        peft.update(dict(recipe.peft_options))
    if spt_allocation is not None:
        cfg.model.backbone.peft.allocation = spt_allocation
    return cfg
