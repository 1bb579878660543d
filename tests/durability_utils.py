"""Helpers for the checkpoint durability tests: a tiny tuned classifier run by the Runner the
way ``tools/train.py`` sets it up (in-process, or as a subprocess that can be killed)."""
import argparse
import os
import os.path as osp
import uuid

import torch

from runner_utils import CONFIGS, data_options, write_peft_config

STOCK = osp.join(CONFIGS, 'vit-tiny_folder-cls.py')

# iteration-based, a checkpoint (and its _merged twin) every iteration, validation in between,
# dropout + drop-path + random flips: every generator the training draws from is exercised
DURABILITY_LINES = """
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=6, val_interval=2)
train_dataloader = dict(sampler=dict(type='InfiniteSampler'), dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'), dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs')]))
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=1), logger=dict(interval=1))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
model = dict(backbone=dict(drop_rate=0.2, drop_path_rate=0.2))
randomness = dict(seed=0, deterministic=False)
log_level = 'WARNING'
"""


def tuned_config(folder, peft=None):
    """The tiny ViT classifier with SSF and the mmssf hooks, iteration-based (written once)."""
    path = osp.join(str(folder), 'ssf_vit.py')
    if not osp.isfile(path):
        base = write_peft_config(osp.join(str(folder), 'ssf_vit_base.py'), STOCK,
                                 'VisionTransformer', peft or dict(type='SSF'))
        with open(path, 'w') as f:
            f.write(f'_base_ = {base!r}\n' + DURABILITY_LINES)
    return path


def options(data_root, *extra):
    return data_options(data_root) + list(extra)


def build_runner(config, work_dir, opts, resume=None, load_from=None):
    """A Runner configured exactly as ``tools/train.py`` configures it."""
    from mmengine.config import Config, DictAction
    from mmengine.runner import Runner

    from mmssf.engine.atomic_checkpoint import use_atomic_checkpoints
    from mmssf.engine.checkpoint_check import add_checkpoint_check
    cfg = Config.fromfile(config)
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)  # (the CLI's parsing)
    cfg.merge_from_dict(parser.parse_args(['--cfg-options'] + list(opts)).cfg_options)
    cfg.work_dir = str(work_dir)
    cfg.launcher = 'none'
    cfg.experiment_name = f'durability_{uuid.uuid4().hex[:8]}'  # (own logger / message hub)
    if resume is not None:
        cfg.resume = True
        cfg.load_from = None if resume == 'auto' else str(resume)
    elif load_from is not None:
        cfg.load_from = str(load_from)
    add_checkpoint_check(cfg)
    use_atomic_checkpoints(cfg)
    return Runner.from_cfg(cfg)


def train(config, work_dir, opts, **kw):
    runner = build_runner(config, work_dir, opts, **kw)
    try:
        runner.train()
    finally:
        _close_logs(runner)
    return runner


def _close_logs(runner):
    for handler in list(runner.logger.handlers):
        if hasattr(handler, 'baseFilename'):
            handler.close()
            runner.logger.removeHandler(handler)


def load(path):
    return torch.load(str(path), map_location='cpu', weights_only=True)


def final_names(work_dir):
    """Files under final names (no temporary files), sorted."""
    return sorted(n for n in os.listdir(work_dir)
                  if n.endswith('.pth') or n == 'last_checkpoint')
