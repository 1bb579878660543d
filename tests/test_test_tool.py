"""``tools/test.py`` takes what upstream users type: ``--out`` predictions in the upstream format
(mmdet: the ``.pkl`` of ``DumpDetResults``; mmseg: a folder of ``.png`` label maps),
``--show-dir`` painted images, ``--tta`` with the config's ``tta_model`` / ``tta_pipeline``,
``--out-item metrics`` the metrics. Checkpoints are random-init models saved from the configs
(what matters is the tool, not the weights)."""
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from runner_utils import CONFIGS, ROOT, data_options, read_json, run_tool

MMDET = osp.join(ROOT, 'configs/demo/mask-rcnn_swin-tiny_demo-coco.py')
MMSEG = osp.join(CONFIGS, 'upernet_swin-tiny_ade.py')


def _random_checkpoint(config, path):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return str(path)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from mmssf.datasets import make_ade20k, make_coco
    root = tmp_path_factory.mktemp('data')
    return {'coco': make_coco(str(root / 'coco'), num_train=2, num_val=2) + '/',
            'ade': make_ade20k(str(root / 'ade'), num_train=2, num_val=2) + '/'}


def test_mmdet_out_pickle_and_show_dir(tmp_path, data):
    ckpt = _random_checkpoint(MMDET, tmp_path / 'det.pth')
    out = tmp_path / 'preds.pkl'
    run_tool(['tools/test.py', MMDET, ckpt, '--work-dir', str(tmp_path / 'w'), '--out', str(out),
              '--show-dir', 'painted', '--cfg-options'] + data_options(data['coco'], coco=True))
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    # DumpDetResults: one dict per image, no ground truth, masks RLE-encoded
    assert isinstance(preds, list) and len(preds) == 2
    for pred in preds:
        assert {'img_id', 'img_path', 'pred_instances'} <= set(pred)
        assert 'gt_instances' not in pred
        inst = pred['pred_instances']
        assert {'bboxes', 'scores', 'labels', 'masks'} <= set(inst)
        assert len(inst['masks']) == len(inst['bboxes']) > 0
        assert all(isinstance(m, dict) and 'counts' in m for m in inst['masks'])
    painted = [f for _, _, files in os.walk(tmp_path / 'w') for f in files if f.endswith('.jpg')]
    assert len(painted) == 2


def test_mmdet_out_must_be_a_pickle(tmp_path, data):
    ckpt = str(tmp_path / 'never_read.pth')  # (refused before anything is built or loaded)
    with pytest.raises(AssertionError) as err:
        run_tool(['tools/test.py', MMDET, ckpt, '--out', str(tmp_path / 'p.txt'), '--work-dir',
                  str(tmp_path / 'w'), '--cfg-options'] + data_options(data['coco'], coco=True))
    assert 'predictions are written as a pickle (.pkl / .pickle), as upstream mmdet does' \
        in str(err.value)


def test_mmseg_out_folder_show_dir_and_metrics(tmp_path, data):
    ckpt = _random_checkpoint(MMSEG, tmp_path / 'seg.pth')
    out = tmp_path / 'pred_maps'
    run_tool(['tools/test.py', MMSEG, ckpt, '--work-dir', str(tmp_path / 'w'), '--out', str(out),
              '--show-dir', str(tmp_path / 'painted'), '--interval', '1', '--cfg-options']
             + data_options(data['ade']))
    maps = sorted(os.listdir(out))
    val = sorted(osp.splitext(n)[0] + '.png'
                 for n in os.listdir(osp.join(data['ade'], 'images', 'validation')))
    assert maps == val
    label = np.array(Image.open(out / maps[0]))
    gt = np.array(Image.open(osp.join(data['ade'], 'annotations', 'validation', maps[0])))
    assert label.shape == gt.shape and label.dtype == np.uint8
    assert label.min() >= 1  # reduce_zero_label: the maps are in the dataset's label space
    painted = [f for _, _, files in os.walk(tmp_path / 'painted') for f in files
               if f.endswith('.png')]
    assert len(painted) == 2

    metrics = tmp_path / 'metrics.json'
    run_tool(['tools/test.py', MMSEG, ckpt, '--work-dir', str(tmp_path / 'w2'), '--tta',
              '--out', str(metrics), '--cfg-options'] + data_options(data['ade']))
    assert 'mIoU' in read_json(metrics)
