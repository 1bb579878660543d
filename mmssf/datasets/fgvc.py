"""FGVC: the five fine-grained datasets with the train / val / test splits of VPT (Jia et al.,
"Visual Prompt Tuning", ECCV 2022), as SSF, SPT and RLRR use them.

Each dataset folder holds ``{train,val,test}.json`` — ``{"relative/image/path": class_id}`` —
and its images under an image folder that depends on the dataset::

    CUB_200_2011/{train,val,test}.json   CUB_200_2011/images/<class>/<image>.jpg
    NABirds/...                          NABirds/images/...
    StanfordDogs/...                     StanfordDogs/Images/...
    StanfordCars/...                     StanfordCars/<paths as listed>
    OxfordFlowers/...                    OxfordFlowers/<paths as listed>

Class ids need not be contiguous: they are sorted and numbered 0..C-1, as VPT does. VPT sorts
the ids of each split file on its own; here the ids of all split files of the folder are sorted
together, so a class missing from one split cannot shift the labels of that split (with every
class in every split, as in the published splits, both give the same labels). mmpretrain has no
reader for this format, hence this class.
"""
import json
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from mmpretrain.datasets.base_dataset import BaseDataset

from ..registry import DATASETS

#: dataset key -> folder name (RLRR's RLRRDatasets/FGVCConfig.py), image folder, classes, name
#: ``sizes``: images per split of VPT's splits (Jia et al. 2022), as the SSF paper lists them
#: (Table 8); ``trainval`` is train + val
FGVC_DATASETS = OrderedDict([
    ('cub', dict(folder='CUB_200_2011', img_dir='images', num_classes=200,
                 name='CUB-200-2011', sizes=dict(train=5394, val=600, test=5794))),
    ('nabirds', dict(folder='NABirds', img_dir='images', num_classes=555, name='NABirds',
                     sizes=dict(train=21536, val=2393, test=24633))),
    ('oxford_flowers', dict(folder='OxfordFlowers', img_dir='', num_classes=102,
                            name='Oxford Flowers', sizes=dict(train=1020, val=1020, test=6149))),
    ('stanford_dogs', dict(folder='StanfordDogs', img_dir='Images', num_classes=120,
                           name='Stanford Dogs', sizes=dict(train=10800, val=1200, test=8580))),
    ('stanford_cars', dict(folder='StanfordCars', img_dir='', num_classes=196,
                           name='Stanford Cars', sizes=dict(train=7329, val=815, test=8041))),
])
#: ``trainval`` is ``trainval.json`` where present, else train.json + val.json
FGVC_SPLITS = ('train', 'val', 'trainval', 'test')
_SPLIT_FILES = ('train', 'val', 'test', 'trainval')


def fgvc_split_size(key: str, split: str) -> int:
    """Images in ``split`` of dataset ``key`` in VPT's splits."""
    sizes = fgvc_dataset(key)['sizes']
    if split not in FGVC_SPLITS:
        raise ValueError(f'unknown FGVC split {split!r}; splits are {", ".join(FGVC_SPLITS)}')
    return sizes['train'] + sizes['val'] if split == 'trainval' else sizes[split]


def fgvc_dataset(key: str) -> dict:
    """The table entry of a dataset key; an unknown key lists the five."""
    if key not in FGVC_DATASETS:
        raise ValueError(f'unknown FGVC dataset {key!r}; the five are: {", ".join(FGVC_DATASETS)}')
    return FGVC_DATASETS[key]


def _read_json(path: str) -> Dict[str, int]:
    try:
        with open(path) as f:
            anno = json.load(f)
    except ValueError as err:
        raise ValueError(f'{path} is not valid JSON: {err}') from None
    if not isinstance(anno, dict):
        raise ValueError(f'{path} must map image paths to class ids, got a {type(anno).__name__}')
    bad = [(k, v) for k, v in anno.items() if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise ValueError(f'{path}: class ids must be integers, e.g. {bad[0][0]!r}: {bad[0][1]!r}')
    return anno


def _split_annotations(root: str, split: str) -> Tuple[Dict[str, int], List[str]]:
    """``({path: class id}, [json files read])`` of a split."""
    if split not in FGVC_SPLITS:
        raise ValueError(f'unknown FGVC split {split!r}; splits are {", ".join(FGVC_SPLITS)}')
    files = [split]
    if split == 'trainval' and not osp.isfile(osp.join(root, 'trainval.json')):
        files = ['train', 'val']
    anno, paths = {}, []
    for name in files:
        path = osp.join(root, f'{name}.json')
        if not osp.isfile(path):
            present = [s for s in _SPLIT_FILES if osp.isfile(osp.join(root, f'{s}.json'))]
            raise FileNotFoundError(
                f'FGVC split file {path} does not exist (split files in {root}: '
                f'{", ".join(p + ".json" for p in present) or "none"}; a dataset folder holds '
                'train.json, val.json and test.json)')
        part = _read_json(path)
        clash = [k for k in part if k in anno and anno[k] != part[k]]
        if clash:
            raise ValueError(f'{clash[0]!r} has class {anno[clash[0]]} in {paths[-1]} but '
                             f'{part[clash[0]]} in {path}')
        anno.update(part)
        paths.append(path)
    return anno, paths


def class_ids(root: str) -> List[int]:
    """The sorted class ids of every split file of a dataset folder (label k = ids[k])."""
    ids = set()
    for name in _SPLIT_FILES:
        path = osp.join(root, f'{name}.json')
        if osp.isfile(path):
            ids.update(_read_json(path).values())
    return sorted(ids)


def read_fgvc_split(root: str, split: str, num_classes: int, img_dir: str = '',
                    check_images: bool = True) -> List[Tuple[str, int]]:
    """``[(image path, label)]`` of one split of a VPT-format dataset folder, checked.

    Errors name the file: a missing split file, more (or fewer) class ids in the folder's split
    files than ``num_classes``, an image listed but absent.
    """
    anno, paths = _split_annotations(root, split)
    ids = class_ids(root)
    if len(ids) != num_classes:
        raise ValueError(
            f'the split files of {root} hold {len(ids)} class ids '
            f'({ids[0] if ids else "-"}..{ids[-1] if ids else "-"}) but the dataset has '
            f'{num_classes} classes: a class id is outside the dataset or a class is missing')
    label_of = {cid: label for label, cid in enumerate(ids)}
    image_root = osp.join(root, img_dir) if img_dir else root
    samples = []
    for rel, cid in anno.items():
        image = osp.join(image_root, rel)
        if check_images and not osp.isfile(image):
            where = next(p for p in paths if rel in _read_json(p))
            raise FileNotFoundError(f'{where}: image {image} ({rel!r}) is listed but does not '
                                    'exist')
        samples.append((image, label_of[cid]))
    if not samples:
        raise ValueError(f'FGVC split {split!r} of {root} lists no images ({", ".join(paths)})')
    return samples


@DATASETS.register_module()
class FGVC(BaseDataset):
    """One FGVC dataset and split in VPT's json format (see the module docstring).

    Args:
        data_root (str): the dataset folder, e.g. ``data/fgvc/CUB_200_2011``.
        dataset (str): one of :data:`FGVC_DATASETS` (``'cub'``, ``'nabirds'``,
            ``'oxford_flowers'``, ``'stanford_dogs'``, ``'stanford_cars'``); sets the image
            folder and the class count.
        split (str): ``'train'``, ``'val'``, ``'trainval'`` or ``'test'``.
        img_dir (str, optional): image folder inside ``data_root`` if not the dataset's usual one.
        check_images (bool): check that every listed image exists (default True).
        **kwargs: mmpretrain ``BaseDataset`` arguments (``pipeline``, ``test_mode``, ...).
    """

    def __init__(self, data_root: str, dataset: str, split: str,
                 img_dir: Optional[str] = None, check_images: bool = True, **kwargs):
        info = fgvc_dataset(dataset)
        self.dataset, self.split, self.check_images = dataset, split, check_images
        self.num_classes = info['num_classes']
        self.img_dir = info['img_dir'] if img_dir is None else img_dir
        metainfo = kwargs.pop('metainfo', None) or dict(
            classes=tuple(str(i) for i in range(self.num_classes)))
        super().__init__(ann_file='', data_root=data_root, metainfo=metainfo, **kwargs)

    def load_data_list(self):
        return [dict(img_path=path, gt_label=label) for path, label in read_fgvc_split(
            self.data_root, self.split, self.num_classes, self.img_dir, self.check_images)]
