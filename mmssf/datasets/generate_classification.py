"""Tiny VTAB-1k and FGVC folders in the layouts the papers' data come in, so that the benchmark
harness (``tools/benchmarks/run_table.py``) and the dataset readers run end to end without the
real data. Same conventions as :mod:`mmssf.datasets.generate`: deterministic (fixed seeds), a
marker file per folder, reused when complete, never written over data it did not write.

* VTAB-1k (:func:`make_vtab1k`): ``<root>/<task>/images/<split>/NNNNNN.jpg`` and
  ``<root>/<task>/<split>.txt`` (``images/<split>/NNNNNN.jpg label``) for the four splits;
  ``train800val200`` holds copies of the train800 and val200 images, as the preparation
  scripts write it. One marker per task folder.
* FGVC (:func:`make_fgvc`): ``<root>/<folder>/{train,val,test}.json`` mapping
  ``<class folder>/<image>.jpg`` (below the dataset's image folder: ``images/``, ``Images/`` or
  the root) to *non-contiguous* class ids (``3 + 2·k``), so the readers' sorting is exercised.

Every class appears in every split, labels cycle through the classes. An image is a textured
patch in its class's colour (hue from the label) with noise, so a model can learn the labels.

Command line::

    python -m mmssf.datasets.generate vtab1k data/vtab-1k-tiny --tasks dtd eurosat
    python -m mmssf.datasets.generate fgvc data/fgvc-tiny --tasks cub
"""
import colorsys
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .fgvc import fgvc_dataset
from .generated_folder import generate_once, save_jpeg, save_json
from .vtab import VTAB1K_SPLITS, vtab1k_task

__all__ = ['make_vtab1k', 'make_fgvc', 'write_vtab1k_task', 'class_image']

#: images per class in each generated split (train800val200 = train800 + val200)
VTAB_PER_CLASS = dict(train800=2, val200=1, test=2)
FGVC_PER_CLASS = dict(train=2, val=1, test=1)


def class_image(rng: np.random.Generator, label: int, num_classes: int,
                size: int) -> np.ndarray:
    """A (size, size, 3) float image whose colour encodes ``label`` (plus texture and noise)."""
    hue = (label * 0.61803398875) % 1.0  # golden-ratio steps: neighbours differ in hue
    value = 0.55 + 0.4 * ((label // 7) % 2)
    colour = 255 * np.asarray(colorsys.hsv_to_rgb(hue, 0.8, value))
    yy, xx = np.mgrid[0:size, 0:size]
    fx, fy = rng.uniform(-0.2, 0.2, size=2)
    texture = 18 * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
    return colour + texture[..., None] + rng.normal(0, 10, size=(size, size, 3))


# ----------------------------------------------------------------------------------- VTAB-1k
def write_vtab1k_task(task_root: str,
                      splits: Dict[str, Sequence[Tuple[np.ndarray, int]]]) -> List[str]:
    """Write ``{split: [(pixels, label)]}`` in the VTAB-1k task layout; return the files written.

    ``splits`` gives ``train800``, ``val200`` and ``test``; ``train800val200`` is written from
    the first two. Pixels are (h, w, 3) arrays in 0..255.
    """
    splits = dict(splits)
    splits['train800val200'] = list(splits['train800']) + list(splits['val200'])
    files = []
    for split in VTAB1K_SPLITS:
        lines = []
        for index, (pixels, label) in enumerate(splits[split]):
            rel = f'images/{split}/{index:06d}.jpg'
            save_jpeg(osp.join(task_root, rel), pixels)
            lines.append(f'{rel} {int(label)}\n')
            files.append(rel)
        with open(osp.join(task_root, f'{split}.txt'), 'w') as f:
            f.writelines(lines)
        files.append(f'{split}.txt')
    return files


def make_vtab1k(root: str, tasks: Sequence[str] = ('dtd', 'eurosat'), img_size: int = 32,
                per_class: Optional[Dict[str, int]] = None, seed: int = 0) -> str:
    """Write (or reuse) tiny VTAB-1k task folders ``<root>/<task>``; return ``root``.

    ``per_class`` images of each class per split (default :data:`VTAB_PER_CLASS`), the task's
    real class count (sun397: 397 classes, so ~2,000 tiny images).
    """
    counts = dict(VTAB_PER_CLASS, **(per_class or {}))
    for task in tasks:
        num_classes, _ = vtab1k_task(task)
        params = dict(task=task, img_size=img_size, per_class=counts, seed=seed)

        def write(out: str, task=task, num_classes=num_classes) -> List[str]:
            splits = {}
            for index, split in enumerate(('train800', 'val200', 'test')):
                rng = np.random.default_rng([seed, index, len(task), sum(map(ord, task))])
                labels = [k % num_classes for k in range(counts[split] * num_classes)]
                splits[split] = [(class_image(rng, label, num_classes, img_size), label)
                                 for label in labels]
            return write_vtab1k_task(out, splits)

        # a task folder without our marker must be empty: never write over real data
        generate_once(osp.join(root, task), 'vtab1k', params, ('', ), write)
    return root


# -------------------------------------------------------------------------------------- FGVC
def make_fgvc(root: str, datasets: Sequence[str] = ('cub', ), img_size: int = 32,
              per_class: Optional[Dict[str, int]] = None, seed: int = 0) -> str:
    """Write (or reuse) tiny FGVC dataset folders ``<root>/<folder>``; return ``root``.

    Folder names and image folders are those of :data:`mmssf.datasets.FGVC_DATASETS`, with the
    dataset's real class count; ``per_class`` images per class and split (default
    :data:`FGVC_PER_CLASS`).
    """
    counts = dict(FGVC_PER_CLASS, **(per_class or {}))
    for key in datasets:
        info = fgvc_dataset(key)
        params = dict(dataset=key, img_size=img_size, per_class=counts, seed=seed)

        def write(out: str, key=key, info=info) -> List[str]:
            num_classes = info['num_classes']
            files = []
            for index, split in enumerate(('train', 'val', 'test')):
                rng = np.random.default_rng([seed, 10 + index, sum(map(ord, key))])
                anno = {}
                for k in range(counts[split] * num_classes):
                    label = k % num_classes
                    rel = f'{label:03d}.class_{label}/{split}_{k:05d}.jpg'
                    image = osp.join(info['img_dir'], rel) if info['img_dir'] else rel
                    save_jpeg(osp.join(out, image),
                               class_image(rng, label, num_classes, img_size))
                    anno[rel] = 3 + 2 * label
                    files.append(image)
                save_json(osp.join(out, f'{split}.json'), anno)
                files.append(f'{split}.json')
            return files

        generate_once(osp.join(root, info['folder']), 'fgvc', params, ('', ), write)
    return root


def main(kind: str, root: str, tasks: Sequence[str], seed: int) -> str:
    """CLI helper of :mod:`mmssf.datasets.generate` for the two classification layouts."""
    if kind == 'vtab1k':
        return make_vtab1k(root, tasks or ('dtd', 'eurosat'), seed=seed)
    return make_fgvc(root, tasks or ('cub', ), seed=seed)
