"""The installed stack: compiled mmcv ops run on CPU, and the whole import set works."""
import subprocess
import sys

import torch


def test_imports_in_fresh_process():
    code = 'import mmcv.ops, mmdet, mmseg, mmpretrain, timm, mmssf'
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0


def test_mmcv_ops_run_on_cpu():
    from mmcv.ops import RoIAlign, nms
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2] and dets.shape == (2, 5)
    feats = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    rois = torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32)
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=False)(feats, rois)
    assert out.shape == (1, 1, 2, 2) and out[0, 0, 0, 0] < out[0, 0, 1, 1]


def test_peft_backbone_rejects_unknown_backbone():
    import pytest
    import mmssf  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    with pytest.raises(TypeError, match='cannot tune .ResNet.*supported implementations'):
        MODELS.build(dict(type='mmssf.PeftBackbone', stock_type='ResNet', depth=18,
                          peft=dict(type='SSF')))
