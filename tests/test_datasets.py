"""The generated datasets load unchanged in the stock mmdet / mmseg dataset classes."""
import json
import os

import numpy as np
from PIL import Image


def test_coco_loads_in_stock_dataset(tmp_path):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    from pycocotools.coco import COCO

    from mmssf.datasets import COCO_CLASSES, make_coco
    register_all_modules()
    root = make_coco(str(tmp_path / 'coco'), num_train=3, num_val=3)
    ann = os.path.join(root, 'annotations/instances_val2017.json')
    with open(ann) as f:
        raw = json.load(f)
    coco = COCO(ann)
    assert len(coco.getImgIds()) == 3 and len(coco.getCatIds()) == len(COCO_CLASSES)
    assert any(isinstance(a['segmentation'], dict) for a in raw['annotations'])  # RLE present
    dataset = CocoDataset(data_root=root + '/', ann_file='annotations/instances_val2017.json',
                          data_prefix=dict(img='val2017/'), metainfo=dict(classes=COCO_CLASSES),
                          pipeline=[], test_mode=True)
    assert len(dataset) == 3
    assert sum(len(dataset[i]['instances']) for i in range(3)) == len(raw['annotations'])


def test_ade20k_loads_in_stock_dataset_and_is_deterministic(tmp_path):
    from mmseg.datasets import ADE20KDataset
    from mmseg.utils import register_all_modules

    from mmssf.datasets import make_ade20k
    register_all_modules()
    root = make_ade20k(str(tmp_path / 'ade'), num_train=2, num_val=2)
    dataset = ADE20KDataset(data_root=root, pipeline=[], data_prefix=dict(
        img_path='images/validation', seg_map_path='annotations/validation'))
    assert len(dataset) == 2
    labels = np.array(Image.open(dataset[0]['seg_map_path']))
    assert labels.dtype == np.uint8 and labels.max() <= 150 and (labels == 0).any()
    again = make_ade20k(str(tmp_path / 'ade2'), num_train=2, num_val=2)
    other = np.array(Image.open(dataset[0]['seg_map_path'].replace(root, again)))
    assert np.array_equal(labels, other)
