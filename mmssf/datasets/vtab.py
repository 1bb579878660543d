"""VTAB-1k (Zhai et al., "A Large-scale Study of Representation Learning with the Visual Task
Adaptation Benchmark", 2019) in the layout the NOAH / SPT preparation scripts write.

One folder per task, images already decoded to JPEG, one ``relative/path label`` list per split
(labels 0-based)::

    <root>/<task>/images/{train800,val200,train800val200,test}/000000.jpg
    <root>/<task>/{train800,val200,train800val200}.txt, test.txt

mmpretrain's stock ``CustomDataset`` reads these lists as they are (``data_root=<root>/<task>``,
``ann_file='<split>.txt'``), so the stock configs use it. :class:`VTAB1k` is that class plus
what it lacks: the task table (class counts, groups) and checks that turn bad data into an error
naming the file and line — a missing split file, a label outside the task's classes, a malformed
line, an image listed but absent — before training starts instead of mid-epoch (or never: an
out-of-range label is silently accepted by the stock class until the loss fails).
"""
import os.path as osp
from collections import OrderedDict
from typing import List, Optional, Tuple

from mmpretrain.datasets import CustomDataset

from ..registry import DATASETS

#: task folder -> (classes, group), in the papers' column order
VTAB1K_TASKS = OrderedDict([
    ('cifar', (100, 'Natural')),
    ('caltech101', (102, 'Natural')),
    ('dtd', (47, 'Natural')),
    ('oxford_flowers102', (102, 'Natural')),
    ('oxford_iiit_pet', (37, 'Natural')),
    ('svhn', (10, 'Natural')),
    ('sun397', (397, 'Natural')),
    ('patch_camelyon', (2, 'Specialized')),
    ('eurosat', (10, 'Specialized')),
    ('resisc45', (45, 'Specialized')),
    ('diabetic_retinopathy', (5, 'Specialized')),
    ('clevr_count', (8, 'Structured')),
    ('clevr_dist', (6, 'Structured')),
    ('dmlab', (6, 'Structured')),
    ('kitti', (4, 'Structured')),
    ('dsprites_loc', (16, 'Structured')),
    ('dsprites_ori', (16, 'Structured')),
    ('smallnorb_azi', (18, 'Structured')),
    ('smallnorb_ele', (9, 'Structured')),
])
VTAB1K_GROUPS = ('Natural', 'Specialized', 'Structured')
#: images of each task's test split (Zhai et al. 2019; listed in the SSF paper, Table 8);
#: every task has 800 / 200 / 1000 in train800 / val200 / train800val200
VTAB1K_TEST_SIZES = OrderedDict([
    ('cifar', 10000), ('caltech101', 6084), ('dtd', 1880), ('oxford_flowers102', 6149),
    ('oxford_iiit_pet', 3669), ('svhn', 26032), ('sun397', 21750), ('patch_camelyon', 32768),
    ('eurosat', 5400), ('resisc45', 6300), ('diabetic_retinopathy', 42670),
    ('clevr_count', 15000), ('clevr_dist', 15000), ('dmlab', 22735), ('kitti', 711),
    ('dsprites_loc', 73728), ('dsprites_ori', 73728), ('smallnorb_azi', 12150),
    ('smallnorb_ele', 12150),
])
_FIXED_SIZES = dict(train800=800, val200=200, train800val200=1000)
#: the list files of every task (train800val200 = train800 + val200, as its own image folder)
VTAB1K_SPLITS = ('train800', 'val200', 'train800val200', 'test')


def vtab1k_split_size(task: str, split: str) -> int:
    """Images in ``split`` of ``task`` as the community's VTAB-1k folders hold them."""
    vtab1k_task(task)
    if split not in VTAB1K_SPLITS:
        raise ValueError(f'unknown VTAB-1k split {split!r}; splits are {", ".join(VTAB1K_SPLITS)}')
    return VTAB1K_TEST_SIZES[task] if split == 'test' else _FIXED_SIZES[split]


def vtab1k_task(task: str) -> Tuple[int, str]:
    """``(num_classes, group)`` of a task folder name; an unknown name lists the 19."""
    if task not in VTAB1K_TASKS:
        raise ValueError(f'unknown VTAB-1k task {task!r}; the 19 tasks are: '
                         f'{", ".join(VTAB1K_TASKS)}')
    return VTAB1K_TASKS[task]


def read_vtab1k_list(task_root: str, split: str, num_classes: int,
                     check_images: bool = True) -> List[Tuple[str, int]]:
    """``[(image path, label)]`` of ``<task_root>/<split>.txt``, checked.

    Raises ``FileNotFoundError`` for a missing list file (naming the splits that exist) or a
    listed image that is absent, ``ValueError`` for a malformed line or a label outside
    ``0..num_classes-1`` — each naming the file and line.
    """
    if split not in VTAB1K_SPLITS:
        raise ValueError(f'unknown VTAB-1k split {split!r} in {task_root}; '
                         f'splits are {", ".join(VTAB1K_SPLITS)}')
    return _read_list(osp.join(task_root, f'{split}.txt'), task_root, num_classes, check_images)


def _read_list(path: str, image_root: str, num_classes: int,
               check_images: bool) -> List[Tuple[str, int]]:
    if not osp.isfile(path):
        folder = osp.dirname(path)
        present = [s for s in VTAB1K_SPLITS if osp.isfile(osp.join(folder, f'{s}.txt'))]
        raise FileNotFoundError(
            f'VTAB-1k split file {path} does not exist (split files in {folder}: '
            f'{", ".join(present) or "none"}; a task folder holds '
            f'{", ".join(s + ".txt" for s in VTAB1K_SPLITS)})')
    samples = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
                raise ValueError(f'{path}:{number}: expected "relative/path label", got {line!r}')
            rel, label = parts[0], int(parts[1])
            if not 0 <= label < num_classes:
                raise ValueError(f'{path}:{number}: label {label} is outside 0..{num_classes - 1} '
                                 f'(the task has {num_classes} classes)')
            image = osp.join(image_root, rel)
            if check_images and not osp.isfile(image):
                raise FileNotFoundError(f'{path}:{number}: image {image} is listed but does not '
                                        'exist')
            samples.append((image, label))
    if not samples:
        raise ValueError(f'VTAB-1k split file {path} lists no images')
    return samples


@DATASETS.register_module()
class VTAB1k(CustomDataset):
    """One VTAB-1k task and split: mmpretrain's ``CustomDataset`` with the checks above.

    Takes the stock class's arguments, so a config switches by changing the type only::

        dataset=dict(type='mmssf.VTAB1k', data_root='data/vtab-1k/dtd',
                     ann_file='train800val200.txt', pipeline=...)

    Args:
        data_root (str): the task folder ``<root>/<task>``.
        ann_file (str): ``'<split>.txt'``, split one of :data:`VTAB1K_SPLITS`.
        task (str, optional): the task name when the folder is named otherwise
            (default: the folder's name).
        check_images (bool): check that every listed image exists (default True).
        **kwargs: the other ``CustomDataset`` arguments (``pipeline``, ``test_mode``, ...).
    """

    def __init__(self, data_root: str, ann_file: str, task: Optional[str] = None,
                 check_images: bool = True, data_prefix: str = '', **kwargs):
        self.task = task or osp.basename(osp.normpath(data_root))
        self.num_classes, self.group = vtab1k_task(self.task)
        split = osp.basename(ann_file)
        self.split = split[:-4] if split.endswith('.txt') else split
        self.check_images = check_images
        metainfo = kwargs.pop('metainfo', None) or dict(
            classes=tuple(str(i) for i in range(self.num_classes)))
        super().__init__(data_root=data_root, ann_file=ann_file, data_prefix=data_prefix,
                         metainfo=metainfo, **kwargs)

    def load_data_list(self):
        if self.split not in VTAB1K_SPLITS:
            raise ValueError(f'{self.ann_file}: unknown VTAB-1k split {self.split!r}; splits are '
                             f'{", ".join(VTAB1K_SPLITS)}')
        return [dict(img_path=path, gt_label=label) for path, label in _read_list(
            self.ann_file, self.img_prefix, self.num_classes, self.check_images)]
