"""A small class-per-folder image dataset (mmpretrain ``CustomDataset`` layout)."""
import os
import os.path as osp

import numpy as np
from PIL import Image

FOLDER_CLASSES = ('red_square', 'green_disc', 'blue_bar')


def _draw(rng, label, size):
    img = (rng.random((size, size, 3)) * 60 + 20).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
    r = size // 5
    if label == 0:
        mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    elif label == 1:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    else:
        mask = abs(xx - cx) < r // 3
    img[mask] = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)][label], np.uint8)
    return img


def make_image_folder(root: str, per_class: int = 4, size: int = 64, seed: int = 0) -> str:
    """Write ``root/{train,val}/<class>/<i>.png``; reused when complete. Returns ``root``."""
    marker = osp.join(root, '.complete')
    if osp.isfile(marker):
        return root
    rng = np.random.default_rng(seed)
    for split in ('train', 'val'):
        for label, name in enumerate(FOLDER_CLASSES):
            folder = osp.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(_draw(rng, label, size)).save(osp.join(folder, f'{i:03d}.png'))
    open(marker, 'w').close()
    return root
