"""Shared set-up of tools/train.py and tools/test.py: config loading, checkpoint paths checked
before anything is built, and CPU-distributed fixes.

mmengine 0.10.7 assumes CUDA for distributed runs: ``init_dist`` calls ``torch.cuda.set_device``,
configs default to ``nccl``, DDP gets ``device_ids=[rank]`` and SyncBN cannot run on CPU. On a
machine without CUDA we initialise a gloo process group ourselves (the Runner then skips
``init_dist``), wrap with ``device_ids=None`` and revert SyncBN to BN in the model config.
"""
import os
import os.path as osp
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction  # noqa: F401  (re-exported for the tools)


def missing_checkpoint(path: Optional[str], what: str) -> Optional[str]:
    """Why the local checkpoint ``path`` cannot be loaded (it does not exist, or is a folder),
    or None when it is a file, a URL (``https://``, ``open-mmlab://`` ...) or not set. Checked
    by the tools before the Runner is built, so that a typo does not wait for the datasets to
    load (mmengine only looks at ``load_from`` after building the train loop)."""
    if not path or '://' in str(path):
        return None
    path = str(path)
    if osp.isfile(path):
        return None
    if osp.isdir(path):
        return f'{what} {path} is a folder, not a checkpoint file'
    folder = osp.dirname(osp.abspath(path))
    near = sorted(n for n in os.listdir(folder) if n.endswith('.pth'))[:8] \
        if osp.isdir(folder) else []
    return (f'{what} {path}: no such file (relative paths start from {os.getcwd()})'
            + (f'; .pth files in {folder}: {", ".join(near)}' if near else
               f'; {folder} does not exist' if not osp.isdir(folder) else ''))


def cpu_distributed(launcher: str) -> bool:
    return launcher != 'none' and not torch.cuda.is_available()


def _sync_bn_to_bn(node):
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'MMSyncBN', 'TorchSyncBN'):
            node['type'] = 'BN'
        for value in node.values():
            _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _sync_bn_to_bn(value)


def setup_launcher(cfg: Config, launcher: str) -> None:
    """Record the launcher in ``cfg`` and, for CPU-only distributed runs, set up gloo."""
    cfg.launcher = launcher
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = '0'
    if not cpu_distributed(launcher):
        return
    if launcher not in ('pytorch', 'slurm'):
        raise ValueError(f'launcher {launcher!r} needs CUDA; on CPU use pytorch (torchrun) or slurm')
    if launcher == 'slurm':  # srun sets SLURM_*; torch needs the env:// variables
        os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
        os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
        os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
        os.environ.setdefault('MASTER_PORT', '29500')
        os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    if not dist.is_initialized():
        dist.init_process_group('gloo')
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    _sync_bn_to_bn(cfg.model)
