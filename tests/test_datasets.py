"""The synthetic datasets load with the stock mmdet / mmseg dataset classes, and generation is
deterministic and idempotent."""
import hashlib
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from mmssf.datasets import COCO_CLASSES, make_ade20k, make_coco
from mmssf.datasets.generate import MARKER, main

NUM_TRAIN, NUM_VAL = 5, 4


def snapshot(root):
    """{relative path: (sha256, mtime_ns)} of every file under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = (hashlib.sha256(f.read()).hexdigest(),
                                                os.stat(path).st_mtime_ns)
    return out


def hashes(snap):
    return {rel: digest for rel, (digest, _) in snap.items()}


def mask_extent(mask):
    """COCO [x, y, w, h] of the pixels of a mask."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    return make_coco(str(tmp_path_factory.mktemp('coco')), num_train=NUM_TRAIN, num_val=NUM_VAL)


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    return make_ade20k(str(tmp_path_factory.mktemp('ade')), num_train=NUM_TRAIN,
                       num_val=NUM_VAL)


def coco_dataset(root, split, pipeline=()):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    register_all_modules()
    return CocoDataset(data_root=root, ann_file=f'annotations/instances_{split}2017.json',
                       data_prefix=dict(img=f'{split}2017/'), metainfo=dict(classes=COCO_CLASSES),
                       pipeline=list(pipeline), test_mode=True)


# --------------------------------------------------------------------------------------- COCO
@pytest.mark.parametrize('split,num_images', [('train', NUM_TRAIN), ('val', NUM_VAL)])
def test_coco_loads_in_mmdet(coco_root, split, num_images):
    with open(osp.join(coco_root, f'annotations/instances_{split}2017.json')) as f:
        ann = json.load(f)
    dataset = coco_dataset(coco_root, split)
    assert len(dataset) == num_images == len(ann['images'])
    infos = [dataset[i] for i in range(len(dataset))]  # pipeline=[]: the parsed data infos
    # every annotation survives mmdet's filters (tiny and RLE ones included), none ignored
    assert sum(len(info['instances']) for info in infos) == len(ann['annotations'])
    assert all(inst['ignore_flag'] == 0 for info in infos for inst in info['instances'])
    assert all(len(info['instances']) >= 1 for info in infos)
    assert all(osp.isfile(info['img_path']) for info in infos)
    # cat ids 1/3/18 -> labels 0/1/2, in COCO_CLASSES order
    assert [c['name'] for c in ann['categories']] == list(COCO_CLASSES)
    name_of = {c['id']: c['name'] for c in ann['categories']}
    json_labels = sorted(COCO_CLASSES.index(name_of[a['category_id']]) for a in ann['annotations'])
    assert sorted(inst['bbox_label'] for info in infos for inst in info['instances']) == json_labels
    assert len(set(json_labels)) == len(COCO_CLASSES)


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_annotations_match_masks(coco_root, split):
    from pycocotools.coco import COCO
    coco = COCO(osp.join(coco_root, f'annotations/instances_{split}2017.json'))
    assert len(set(coco.getAnnIds())) == len(coco.dataset['annotations'])
    num_rle = 0
    for img_id in coco.getImgIds():
        img = coco.loadImgs(img_id)[0]
        with Image.open(osp.join(coco_root, f'{split}2017', img['file_name'])) as im:
            assert im.size == (img['width'], img['height'])
        masks = []
        for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            mask = coco.annToMask(a).astype(bool)
            assert mask.shape == (img['height'], img['width'])
            assert a['bbox'] == mask_extent(mask)
            assert a['area'] == mask.sum() and a['iscrowd'] == 0
            if isinstance(a['segmentation'], dict):
                assert isinstance(a['segmentation']['counts'], str)
                num_rle += 1
            masks.append(mask)
        total = np.sum(masks, axis=0)
        assert total.max() == 1, 'objects must not overlap'
    assert 0 < num_rle < len(coco.dataset['annotations'])


def test_coco_edge_cases(coco_root):
    """The val split holds a tiny object, a touching pair and a border object."""
    from pycocotools.coco import COCO
    coco = COCO(osp.join(coco_root, 'annotations/instances_val2017.json'))
    anns = coco.dataset['annotations']
    assert any(a['bbox'][2] <= 4 and a['bbox'][3] <= 4 for a in anns)
    touching = border = 0
    for img in coco.dataset['images']:
        masks = [coco.annToMask(a).astype(bool)
                 for a in coco.loadAnns(coco.getAnnIds(imgIds=img['id']))]
        for m in masks:
            border += bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
        for i, a in enumerate(masks):
            for b in masks[i + 1:]:
                grown = a.copy()
                grown[:, 1:] |= a[:, :-1]
                grown[:, :-1] |= a[:, 1:]
                grown[1:] |= a[:-1]
                grown[:-1] |= a[1:]
                touching += bool((grown & b).any())
    assert touching >= 1 and border >= 1


def test_coco_masks_through_mmdet_pipeline(coco_root):
    """mmdet's LoadAnnotations decodes polygon and RLE masks to the annotated boxes."""
    dataset = coco_dataset(coco_root, 'val', pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True)])
    for i in range(len(dataset)):
        results = dataset[i]
        assert results['img'].shape[:2] == (results['height'], results['width'])
        assert not results['gt_ignore_flags'].any()
        masks = results['gt_masks'].masks.astype(bool)
        boxes = results['gt_bboxes'].numpy()
        for mask, (x1, y1, x2, y2) in zip(masks, boxes):
            x, y, w, h = mask_extent(mask)
            assert [x, y, x + w, y + h] == [x1, y1, x2, y2]


# ------------------------------------------------------------------------------------- ADE20K
def ade_dataset(root, split, pipeline=()):
    from mmseg.datasets import ADE20KDataset
    from mmseg.utils import register_all_modules
    register_all_modules()
    return ADE20KDataset(data_root=root, data_prefix=dict(img_path=f'images/{split}',
                                                          seg_map_path=f'annotations/{split}'),
                         pipeline=list(pipeline))


@pytest.mark.parametrize('split,num_images', [('training', NUM_TRAIN), ('validation', NUM_VAL)])
def test_ade20k_loads_in_mmseg(ade_root, split, num_images):
    dataset = ade_dataset(ade_root, split)
    assert len(dataset) == num_images
    seen = set()
    for i in range(len(dataset)):
        info = dataset[i]
        assert info['reduce_zero_label'] is True
        assert osp.isfile(info['img_path']) and osp.isfile(info['seg_map_path'])
        assert osp.splitext(osp.basename(info['img_path']))[0] == \
            osp.splitext(osp.basename(info['seg_map_path']))[0]
        with Image.open(info['seg_map_path']) as png:
            assert png.mode == 'L'
            labels = np.asarray(png)
        assert labels.dtype == np.uint8
        with Image.open(info['img_path']) as im:
            assert im.size == png.size == (64, 64)
        values = set(np.unique(labels).tolist())
        assert 0 in values and max(values) <= 150 and len(values) >= 4
        seen |= values
    assert 150 in seen


def test_ade20k_reduce_zero_label_through_mmseg_pipeline(ade_root):
    dataset = ade_dataset(ade_root, 'validation', pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')])
    results = dataset[0]
    with Image.open(results['seg_map_path']) as png:
        raw = np.asarray(png)
    gt = results['gt_seg_map']
    assert gt.shape == raw.shape == results['img'].shape[:2]
    assert (gt[raw == 0] == 255).all()
    assert (gt[raw > 0] == raw[raw > 0].astype(np.int64) - 1).all()


def test_ade20k_colours_follow_labels(ade_root):
    """Pixels of one label are closer to their own class's mean colour than to others'."""
    img_path = osp.join(ade_root, 'images/validation/ADE_val_00000001.jpg')
    seg_path = osp.join(ade_root, 'annotations/validation/ADE_val_00000001.png')
    img = np.asarray(Image.open(img_path), dtype=np.float64)
    labels = np.asarray(Image.open(seg_path))
    values = [v for v in np.unique(labels) if v != 0]
    means = np.stack([img[labels == v].mean(axis=0) for v in values])
    pixels = img[labels != 0]
    nearest = np.argmin(((pixels[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (np.asarray(values)[nearest] == labels[labels != 0]).mean() > 0.95


# ---------------------------------------------------------------------------- idempotence, CLI
@pytest.mark.parametrize('make', [make_coco, make_ade20k])
def test_generation_is_idempotent_and_deterministic(tmp_path, make):
    first = make(str(tmp_path / 'a'))
    assert first == str(tmp_path / 'a')
    before = snapshot(first)
    assert MARKER in before and len(before) > 3
    assert make(first) == first
    assert snapshot(first) == before, 'a second run must leave the files untouched'
    assert hashes(snapshot(make(str(tmp_path / 'b')))) == hashes(before), 'not deterministic'
    assert hashes(snapshot(make(str(tmp_path / 'c'), seed=1))) != hashes(before)


def test_changed_arguments_regenerate_and_prune(tmp_path):
    root = make_ade20k(str(tmp_path), num_train=2, num_val=3)
    make_ade20k(root, num_train=2, num_val=1)
    assert sorted(os.listdir(osp.join(root, 'images/validation'))) == ['ADE_val_00000001.jpg']
    assert sorted(os.listdir(osp.join(root, 'annotations/validation'))) == \
        ['ADE_val_00000001.png']
    assert ade_dataset(root, 'validation').__len__() == 1


def test_incomplete_marker_regenerates(tmp_path):
    root = make_coco(str(tmp_path))
    reference = hashes(snapshot(root))
    marker = osp.join(root, MARKER)
    with open(marker) as f:
        content = json.load(f)
    content['complete'] = False
    with open(marker, 'w') as f:
        json.dump(content, f)
    os.remove(osp.join(root, 'val2017', os.listdir(osp.join(root, 'val2017'))[0]))
    make_coco(root)
    assert hashes(snapshot(root)) == reference


def test_foreign_data_is_not_overwritten(tmp_path):
    os.makedirs(tmp_path / 'annotations')
    (tmp_path / 'annotations' / 'instances_val2017.json').write_text('{}')
    with pytest.raises(FileExistsError):
        make_coco(str(tmp_path))
    assert (tmp_path / 'annotations' / 'instances_val2017.json').read_text() == '{}'


def test_cli(tmp_path, capsys):
    root = str(tmp_path / 'ade')
    assert main(['ade20k', root, '--num-train', '1', '--num-val', '2']) == root
    assert capsys.readouterr().out.strip() == root
    assert len(os.listdir(osp.join(root, 'images/validation'))) == 2
