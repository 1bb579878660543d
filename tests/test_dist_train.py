"""tools/dist_train.sh: two CPU processes (gloo, torchrun) train SSF Mask R-CNN and save a stock
checkpoint."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from runner_utils import HANG_TIMEOUT, ROOT, data_options

pytestmark = pytest.mark.slow  # two torchrun processes through the Runner


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_dist_train_two_cpu_processes(tmp_path):
    from mmssf.datasets import make_coco
    data = make_coco(str(tmp_path / 'coco'), num_train=4, num_val=2) + '/'
    work = tmp_path / 'work'
    opts = data_options(data, coco=True) + [
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
        'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=1']
    env = dict(os.environ, PORT=str(_free_port()), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', 'configs/demo/ssf_mask-rcnn_swin-tiny_demo-coco.py', '2',
         '--work-dir', str(work), '--cfg-options'] + opts,
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert 'world_size: 2' in output or 'Distributed launcher: pytorch' in output
    merged = torch.load(work / 'epoch_1_merged.pth', weights_only=True)
    assert not any('ssf_' in k for k in merged['state_dict'])
    assert any(k.startswith('backbone.stages.0.blocks.0.attn.w_msa.qkv') for k in merged['state_dict'])
