"""Train with any mmpretrain / mmdet / mmseg config (the config's default_scope decides).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp [--amp-dtype D]]
        [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]
"""
import argparse
import os
import os.path as osp

# only the argument parser's needs here: --help answers before torch and mmssf are imported
from mmengine.config import DictAction


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model (mmssf)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (mmssf.AmpOptimWrapper: GPU or CPU)')
    parser.add_argument('--amp-dtype', choices=('float16', 'bfloat16'), default=None,  # (amp.AMP_DTYPES)
                        help='autocast dtype with --amp (default: float16 on GPU, bfloat16 on CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true', help='scale lr by batch size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or from the latest one in the work dir if none given')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (xxx=[a,b] for lists)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()
    import mmssf  # noqa: F401  (registers mmssf and applies the stack fixes)
    from mmssf.download import WeightDownloadError, with_config_keys
    from mmssf.engine.amp import use_amp
    from mmssf.engine.atomic_checkpoint import use_atomic_checkpoints
    from mmssf.engine.checkpoint_check import CheckpointMismatchError, add_checkpoint_check
    from mmssf.fileio import CheckpointFileError, CheckpointWriteError
    from mmssf.launch import Config, missing_checkpoint, setup_launcher

    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    setup_launcher(cfg, args.launcher)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        use_amp(cfg, args.amp_dtype)
    elif args.amp_dtype is not None:
        raise SystemExit('tools/train.py: --amp-dtype needs --amp')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg:
            raise KeyError('--auto-scale-lr needs "auto_scale_lr" (base_batch_size) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    problem = missing_checkpoint(cfg.get('load_from'),
                                 '--resume' if cfg.get('resume') else 'load_from')
    if problem:  # (before the datasets load: mmengine looks at it only after building them)
        raise SystemExit(f'tools/train.py: {problem}')

    add_checkpoint_check(cfg)  # misfitting load_from / --resume / test checkpoints are errors
    use_atomic_checkpoints(cfg)  # crash-consistent, verified, exactly resumable checkpoints

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    try:  # (building loads a PeftBackbone's pretrained weights; train() a stock one's)
        runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
        runner.train()
    except WeightDownloadError as err:  # offline: which config key to point at a local file
        raise SystemExit(f'tools/train.py: {with_config_keys(err, cfg)}') from None
    except (CheckpointFileError, CheckpointWriteError, CheckpointMismatchError) as err:
        # (the message says it all: which file, what is wrong, what to do)
        raise SystemExit(f'tools/train.py: {err}') from None


if __name__ == '__main__':
    main()
