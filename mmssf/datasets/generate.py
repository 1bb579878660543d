"""Small, deterministic datasets in the real COCO and ADE20K on-disk formats.

They exist so that demos and tests can run the stock mmdet / mmseg dataset classes, loaders
and metrics end to end without downloading anything. Each generator writes its dataset into a
folder on first use and reuses it afterwards; the output depends only on the arguments (fixed
seeds), needs only numpy, Pillow and pycocotools, and takes well under a second.

Idempotence (a marker file; an incomplete or foreign folder is never reused or overwritten):
see :mod:`mmssf.datasets.generated_folder`.

Command line::

    python -m mmssf.datasets.generate coco data/coco_tiny
    python -m mmssf.datasets.generate ade20k data/ade_tiny --num-val 2
    python -m mmssf.datasets.generate vtab1k data/vtab-1k-tiny --tasks dtd eurosat
    python -m mmssf.datasets.generate fgvc data/fgvc-tiny --tasks cub

(The VTAB-1k and FGVC layouts are written by :mod:`mmssf.datasets.generate_classification`.)
"""
import argparse
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..cli import NameList
from .generate_classification import main as make_classification
from .generated_folder import MARKER, generate_once, save_jpeg, save_json, save_label_png

__all__ = ['MARKER', 'COCO_CLASSES', 'COCO_CATEGORIES', 'ADE20K_ROLES', 'make_coco', 'make_ade20k']

# Category ids are the real COCO ones (not contiguous), so configs exercise mmdet's
# cat_id -> label mapping. Pass ``metainfo=dict(classes=COCO_CLASSES)`` to the dataset.
COCO_CATEGORIES = (
    dict(id=1, name='person', supercategory='person'),
    dict(id=3, name='car', supercategory='vehicle'),
    dict(id=18, name='dog', supercategory='animal'),
)
COCO_CLASSES = tuple(cat['name'] for cat in COCO_CATEGORIES)
# Base fill colour of each category: colour, not shape, tells the categories apart.
_COCO_COLOURS = {1: (205, 55, 45), 3: (45, 175, 70), 18: (55, 85, 215)}

# ADE20K label values (PNG convention: 0 unlabeled, k = mmseg class k-1) drawn in the scenes,
# and their base colours in the image. 'last' is label ``num_classes`` (ADE: 150, 'flag').
ADE20K_ROLES = dict(wall=1, sky=3, floor=4, tree=5, person=13)
_ADE_COLOURS = dict(wall=(200, 188, 160), sky=(125, 175, 235), floor=(135, 95, 55),
                    tree=(40, 125, 45), person=(200, 60, 60), last=(225, 40, 200))
_UNLABELED_COLOUR = (60, 60, 60)

_MIN_SIDE = 48

Mask = np.ndarray  # (h, w) bool
Polygon = List[float]  # COCO flat [x0, y0, x1, y1, ...] in pixel-edge coordinates


# ------------------------------------------------------------------------------ sizes
def _check_size(img_size: Tuple[int, int]) -> Tuple[int, int]:
    """Validate an ``(h, w)`` image size and return it as a tuple of ints."""
    h, w = (int(v) for v in img_size)
    if min(h, w) < _MIN_SIDE:
        raise ValueError(f'img_size {img_size} is too small: both sides must be >= {_MIN_SIDE}')
    return h, w


# ------------------------------------------------------------------------------- pixel tools
def _dilate(mask: Mask) -> Mask:
    """Grow a mask by one pixel in the four axis directions."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _textured_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted (h, w, 3) float image: smooth colour blotches, faint stripes and grain."""
    coarse = rng.uniform(80, 170, size=(h // 16 + 2, w // 16 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float64)
    smooth = 0.7 * smooth.mean(axis=2, keepdims=True) + 0.3 * smooth  # desaturate
    yy, xx = np.mgrid[0:h, 0:w]
    fx, fy = rng.uniform(-0.12, 0.12, size=2)
    stripes = 10 * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
    grain = rng.normal(0, 5, size=(h, w, 1))
    return smooth + stripes[..., None] + grain


def _paint(pixels: np.ndarray, mask: Mask, base: Sequence[int], rng: np.random.Generator,
           jitter: int = 25, noise: float = 8.0) -> None:
    """Fill ``mask`` in ``pixels`` with a jittered version of ``base`` plus per-pixel noise."""
    colour = np.asarray(base, dtype=np.float64) + rng.integers(-jitter, jitter + 1, size=3)
    pixels[mask] = colour + rng.normal(0, noise, size=(int(mask.sum()), 3))


# ------------------------------------------------------------------------------ COCO shapes
def _rectangle(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    """Axis-aligned rectangle covering pixel columns x0..x1-1 and rows y0..y1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _ellipse(cx: float, cy: float, rx: float, ry: float, vertices: int = 24) -> Polygon:
    """Ellipse outline approximated by a regular polygon."""
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1).ravel().tolist()


def _triangle(cx: float, cy: float, r: float, angle: float) -> Polygon:
    """Equilateral triangle of circumradius ``r`` rotated by ``angle`` radians."""
    t = angle + np.array([0, 2, 4]) * np.pi / 3
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1).ravel().tolist()


def _round_polygon(poly: Sequence[float]) -> Polygon:
    """Round coordinates to 2 decimals, as stored in the json (the mask is built from these)."""
    return [round(float(v), 2) for v in poly]


def _polygon_mask(poly: Polygon, h: int, w: int) -> Mask:
    """Rasterize a COCO polygon exactly as pycocotools (and so mmdet / COCOeval) do."""
    rle = mask_utils.frPyObjects([poly], h, w)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def _ring_mask(cx: float, cy: float, r_out: float, r_in: float, h: int, w: int) -> Mask:
    """Disc with a concentric hole, evaluated at pixel centres (not describable by a polygon)."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    return (d2 <= r_out ** 2) & (d2 > r_in ** 2)


def _random_shape(rng: np.random.Generator, h: int, w: int) -> Polygon:
    """A rectangle, ellipse or triangle of random size and place, kept 1 px off the border."""
    size = rng.uniform(max(8, min(h, w) / 8), min(h, w) / 3)
    kind = rng.integers(3)
    if kind == 0:
        bw, bh = size * rng.uniform(0.6, 1.4), size * rng.uniform(0.6, 1.4)
        x0, y0 = rng.uniform(1, w - 1 - bw), rng.uniform(1, h - 1 - bh)
        poly = _rectangle(np.floor(x0), np.floor(y0), np.floor(x0 + bw), np.floor(y0 + bh))
    elif kind == 1:
        rx, ry = size / 2 * rng.uniform(0.6, 1.0), size / 2 * rng.uniform(0.6, 1.0)
        poly = _ellipse(rng.uniform(1 + rx, w - 1 - rx), rng.uniform(1 + ry, h - 1 - ry), rx, ry)
    else:
        r = size / 2
        poly = _triangle(rng.uniform(1 + r, w - 1 - r), rng.uniform(1 + r, h - 1 - r), r,
                         rng.uniform(0, 2 * np.pi))
    return _round_polygon(poly)


# ------------------------------------------------------------------------------ COCO objects
def _coco_object(category_id: int, mask: Mask, polygon: Optional[Polygon]) -> dict:
    """One object: its category, its pixel mask and the polygon it came from (None: RLE)."""
    if not mask.any():
        raise ValueError('an object must cover at least one pixel')
    return dict(category_id=category_id, mask=mask, polygon=polygon)


def _edge_case_objects(h: int, w: int) -> List[dict]:
    """Objects every split's first image carries, placed at fixed, size-relative positions.

    A tiny 4x4 object; a rectangle with a ring stored as RLE touching its right side (the
    touching pair); a triangle touching the right image border.
    """
    tiny = _rectangle(w // 2, 4, w // 2 + 4, 8)
    ax0, ay0, ax1, ay1 = 4, h // 2 - h // 8, 4 + w // 6, h // 2 + h // 8
    pair_left = _rectangle(ax0, ay0, ax1, ay1)
    r_out = h / 8
    ring = _ring_mask(ax1 + r_out, h / 2 + h / 16, r_out, r_out / 2.5, h, w)
    shift = ax1 - int(np.nonzero(ring.any(axis=0))[0].min())  # leftmost column -> ax1
    ring = np.roll(ring, shift, axis=1)
    y_top = h // 5
    border = [float(w), float(y_top), float(w), float(y_top + h // 4),
              float(w - w // 6), float(y_top + h // 8)]
    objects = [
        _coco_object(18, _polygon_mask(tiny, h, w), tiny),
        _coco_object(3, _polygon_mask(pair_left, h, w), pair_left),
        _coco_object(1, ring, None),
        _coco_object(18, _polygon_mask(border, h, w), border),
    ]
    occupied = np.zeros((h, w), dtype=bool)
    for obj in objects:
        if (obj['mask'] & occupied).any():
            raise ValueError(f'img_size {(h, w)} is too small for the fixed edge-case objects')
        occupied |= obj['mask']
    return objects


def _place_random_objects(rng: np.random.Generator, h: int, w: int, occupied: Mask,
                          count: int, rle_fraction: float = 0.25, tries: int = 60) -> List[dict]:
    """Up to ``count`` random shapes that neither overlap nor touch ``occupied`` (updated)."""
    objects = []
    for _ in range(tries):
        if len(objects) == count:
            break
        poly = _random_shape(rng, h, w)
        category_id = COCO_CATEGORIES[rng.integers(len(COCO_CATEGORIES))]['id']
        as_rle = rng.random() < rle_fraction
        mask = _polygon_mask(poly, h, w)
        if not mask.any() or (_dilate(mask) & occupied).any():
            continue
        occupied |= mask
        objects.append(_coco_object(category_id, mask, None if as_rle else poly))
    return objects


def _coco_segmentation(obj: dict) -> object:
    """The json ``segmentation``: ``[polygon]``, or compressed RLE with ``counts`` as str."""
    if obj['polygon'] is not None:
        return [obj['polygon']]
    h, w = obj['mask'].shape
    rle = mask_utils.encode(np.asfortranarray(obj['mask'].astype(np.uint8)))
    return dict(size=[h, w], counts=rle['counts'].decode('ascii'))


def _mask_bbox(mask: Mask) -> List[float]:
    """COCO ``[x, y, w, h]`` of the pixels a mask covers."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()),
            float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _coco_annotation(obj: dict, ann_id: int, image_id: int) -> dict:
    """A COCO instance annotation; ``bbox`` and ``area`` come from the mask."""
    return dict(id=ann_id, image_id=image_id, category_id=obj['category_id'],
                segmentation=_coco_segmentation(obj), area=float(obj['mask'].sum()),
                bbox=_mask_bbox(obj['mask']), iscrowd=0)


def _coco_image(rng: np.random.Generator, h: int, w: int,
                with_edge_cases: bool) -> Tuple[np.ndarray, List[dict]]:
    """Pixels and objects of one image (at least one object, none overlapping)."""
    objects = _edge_case_objects(h, w) if with_edge_cases else []
    occupied = np.zeros((h, w), dtype=bool)
    for obj in objects:
        occupied |= obj['mask']
    objects += _place_random_objects(rng, h, w, occupied, count=int(rng.integers(2, 5)))
    pixels = _textured_background(rng, h, w)
    for obj in objects:
        _paint(pixels, obj['mask'], _COCO_COLOURS[obj['category_id']], rng)
    return pixels, objects


def _write_coco_split(root: str, split: str, split_index: int, num_images: int,
                      first_image_id: int, first_ann_id: int, h: int, w: int,
                      seed: int) -> Tuple[List[str], int]:
    """Write ``<split>2017/*.jpg`` and ``annotations/instances_<split>2017.json``.

    Returns the relative paths written and the next free annotation id.
    """
    images, annotations, files = [], [], []
    ann_id = first_ann_id
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_index, index])
        pixels, objects = _coco_image(rng, h, w, with_edge_cases=index == 0)
        image_id = first_image_id + index
        file_name = f'{image_id:012d}.jpg'
        save_jpeg(osp.join(root, f'{split}2017', file_name), pixels)
        files.append(f'{split}2017/{file_name}')
        images.append(dict(id=image_id, file_name=file_name, height=h, width=w))
        for obj in objects:
            annotations.append(_coco_annotation(obj, ann_id, image_id))
            ann_id += 1
    ann_rel = f'annotations/instances_{split}2017.json'
    save_json(osp.join(root, ann_rel), dict(
        info=dict(description=f'mmssf synthetic COCO ({split})', version='1.0', year=2017),
        licenses=[], images=images, annotations=annotations,
        categories=[dict(cat) for cat in COCO_CATEGORIES]))
    return files + [ann_rel], ann_id


def make_coco(root: str, num_train: int = 8, num_val: int = 4,
              img_size: Tuple[int, int] = (96, 128), seed: int = 0) -> str:
    """Write (or reuse) a tiny COCO instance-segmentation dataset in ``root``; return ``root``.

    Layout, as mmdet's stock ``CocoDataset`` expects: ``train2017/*.jpg``, ``val2017/*.jpg``,
    ``annotations/instances_{train,val}2017.json``. Images of ``img_size`` ``(h, w)`` show
    coloured rectangles, ellipses and triangles on a textured background; the category
    (``COCO_CLASSES``, real COCO ids 1/3/18) sets the fill colour. Objects never overlap, so
    every mask is exactly the pixels of its object. About a quarter of the segmentations are
    compressed RLE (``counts`` a str), the rest polygons; ``bbox`` and ``area`` are computed
    from the masks. The first image of each split also holds a 4x4 object, a rectangle
    touching an RLE ring, and a triangle touching the right border. Image and annotation ids
    are unique across both splits.
    """
    h, w = _check_size(img_size)
    params = dict(num_train=num_train, num_val=num_val, img_size=[h, w], seed=seed)

    def write(out: str) -> List[str]:
        train, next_ann_id = _write_coco_split(out, 'train', 0, num_train, 1, 1, h, w, seed)
        val, _ = _write_coco_split(out, 'val', 1, num_val, num_train + 1, next_ann_id, h, w, seed)
        return train + val

    return generate_once(root, 'coco', params, ('train2017', 'val2017', 'annotations'), write)


# ---------------------------------------------------------------------------- ADE20K scenes
def _ade_label_values(num_classes: int) -> Dict[str, int]:
    """Label value of each scene role; 'last' is ``num_classes`` (ADE20K: 150, 'flag')."""
    if num_classes <= max(ADE20K_ROLES.values()) or num_classes > 255:
        raise ValueError(f'num_classes must be in {max(ADE20K_ROLES.values()) + 1}..255, '
                         f'got {num_classes}')
    return dict(ADE20K_ROLES, last=num_classes)


def _ellipse_region(cx: float, cy: float, rx: float, ry: float, h: int, w: int) -> Mask:
    """Filled ellipse evaluated at pixel centres."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def _add_region(labels: np.ndarray, region: Mask, value: int) -> None:
    """Paint ``region`` with ``value`` inside a 1-pixel unlabeled (0) outline, as ADE does."""
    labels[_dilate(region) & ~region] = 0
    labels[region] = value


def _ade_scene_labels(rng: np.random.Generator, h: int, w: int, values: Dict[str, int],
                      with_last: bool) -> np.ndarray:
    """An (h, w) uint8 label map: sky above a wavy horizon, wall, floor, trees, people, flag."""
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = h * rng.uniform(0.25, 0.4) + h * 0.04 * np.sin(
        2 * np.pi * xx / w * rng.uniform(0.5, 2) + rng.uniform(0, 2 * np.pi))
    floor_line = h * rng.uniform(0.65, 0.8)
    labels = np.full((h, w), values['wall'], dtype=np.uint8)
    labels[yy < horizon] = values['sky']
    labels[yy >= floor_line] = values['floor']
    for _ in range(rng.integers(1, 3)):
        _add_region(labels, _ellipse_region(rng.uniform(0, w), h * rng.uniform(0.3, 0.45),
                                            w * rng.uniform(0.08, 0.15),
                                            h * rng.uniform(0.12, 0.2), h, w), values['tree'])
    for _ in range(rng.integers(1, 3)):
        ry = h * rng.uniform(0.12, 0.2)
        _add_region(labels, _ellipse_region(rng.uniform(0.1, 0.9) * w, floor_line - 0.6 * ry,
                                            0.4 * ry, ry, h, w), values['person'])
    if with_last:
        x0, y0 = int(rng.integers(2, w - 12)), int(rng.integers(2, max(3, h // 4)))
        region = np.zeros((h, w), dtype=bool)
        region[y0:y0 + 6, x0:x0 + 9] = True
        _add_region(labels, region, values['last'])
    return labels


def _ade_render(rng: np.random.Generator, labels: np.ndarray,
                values: Dict[str, int]) -> np.ndarray:
    """Image pixels whose colour follows the label map (per-image jitter, per-pixel noise)."""
    lut = np.tile(np.asarray(_UNLABELED_COLOUR, dtype=np.float64), (256, 1))
    for role, value in values.items():
        lut[value] = np.asarray(_ADE_COLOURS[role]) + rng.integers(-15, 16, size=3)
    h, w = labels.shape
    shade = np.linspace(-12, 12, h)[:, None, None]
    return lut[labels] + shade + rng.normal(0, 7, size=(h, w, 3))


def _write_ade_split(root: str, split: str, prefix: str, split_index: int, num_images: int,
                     h: int, w: int, values: Dict[str, int], seed: int) -> List[str]:
    """Write ``images/<split>/<prefix>_N.jpg`` and ``annotations/<split>/<prefix>_N.png``."""
    files = []
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_index, index])
        labels = _ade_scene_labels(rng, h, w, values, with_last=index == 0 or rng.random() < .5)
        name = f'{prefix}_{index + 1:08d}'
        save_jpeg(osp.join(root, 'images', split, name + '.jpg'), _ade_render(rng, labels, values))
        save_label_png(osp.join(root, 'annotations', split, name + '.png'), labels)
        files += [f'images/{split}/{name}.jpg', f'annotations/{split}/{name}.png']
    return files


def make_ade20k(root: str, num_train: int = 8, num_val: int = 4,
                img_size: Tuple[int, int] = (64, 64), num_classes: int = 150,
                seed: int = 0) -> str:
    """Write (or reuse) a tiny ADE20K-style semantic-segmentation dataset; return ``root``.

    Layout, as mmseg's stock ``ADE20KDataset`` expects: ``images/{training,validation}/
    ADE_{train,val}_0000000N.jpg`` with same-named single-channel uint8 PNGs under
    ``annotations/``. Labels follow ADE's convention: 0 is unlabeled (becomes 255 / ignored
    with ``reduce_zero_label=True``) and 1..``num_classes`` are classes (k becomes k-1).
    Each scene uses wall, sky, floor, tree and person (ADE labels 1, 3, 4, 5, 13), often
    label ``num_classes`` (ADE's 'flag'; always in the first image of a split), and 1-pixel
    unlabeled outlines around objects; image colours follow the labels, so a model can
    learn them.
    """
    h, w = _check_size(img_size)
    values = _ade_label_values(num_classes)
    params = dict(num_train=num_train, num_val=num_val, img_size=[h, w],
                  num_classes=num_classes, seed=seed)

    def write(out: str) -> List[str]:
        return (_write_ade_split(out, 'training', 'ADE_train', 0, num_train, h, w, values, seed)
                + _write_ade_split(out, 'validation', 'ADE_val', 1, num_val, h, w, values, seed))

    return generate_once(root, 'ade20k', params, ('images', 'annotations'), write)


# ------------------------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> str:
    """Command-line entry point: write one dataset and print its folder."""
    parser = argparse.ArgumentParser(
        prog='python -m mmssf.datasets.generate',
        description='Write a tiny synthetic dataset in COCO, ADE20K, VTAB-1k or FGVC format '
                    '(reused if present).')
    parser.add_argument('kind', choices=('coco', 'ade20k', 'vtab1k', 'fgvc'))
    parser.add_argument('root', help='output folder')
    parser.add_argument('--num-train', type=int, default=8, help='coco / ade20k')
    parser.add_argument('--num-val', type=int, default=4, help='coco / ade20k')
    parser.add_argument('--tasks', nargs='+', default=(), action=NameList,
                        help='space- or comma-separated; vtab1k: task folders (default: dtd eurosat); fgvc: dataset keys '
                             '(default: cub)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind in ('vtab1k', 'fgvc'):
        root = make_classification(args.kind, args.root, args.tasks, args.seed)
    else:
        make = make_coco if args.kind == 'coco' else make_ade20k
        root = make(args.root, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    print(root)
    return root


if __name__ == '__main__':
    main()
