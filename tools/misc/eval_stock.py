"""Evaluate a checkpoint with a *stock* config in a process that never imports mmssf.

    python tools/misc/eval_stock.py CONFIG CHECKPOINT [--out metrics.json] [--work-dir DIR]
        [--cfg-options k=v ...]

This is the user's view of a merged checkpoint: plain mmengine Runner, upstream config and
model code, ``torch.load(weights_only=True)``; it fails if anything imported mmssf.
"""
import argparse
import json
import os.path as osp
import pickle
import sys
import tempfile
import warnings
import zipfile

from mmengine.config import Config, DictAction

# mmengine resolves ``mmdet::`` bases through pkg_resources, deprecated by setuptools: nothing a
# user can act on (mmssf's compat silences it the same way; this process never imports mmssf)
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out')
    parser.add_argument('--work-dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def why_unloadable(path, err) -> str:
    """What is wrong with a checkpoint torch.load (weights_only) refused, in plain words."""
    if isinstance(err, pickle.UnpicklingError) and zipfile.is_zipfile(path):
        return ('it holds objects that are neither tensors nor plain data and unpickling them '
                f'could run code; refused (torch.load weights_only=True). Details: {err}')
    if osp.isfile(path):
        with open(path, 'rb') as f:
            head = f.read(4)
        if not head:
            return 'it is empty (0 bytes)'
        if head.startswith(b'PK') and not zipfile.is_zipfile(path):
            return f'it is truncated or corrupted (the zip archive cannot be read: {err})'
        if not head.startswith((b'PK', b'\x80')):
            return f'it is not a PyTorch checkpoint (starts with {head!r})'
    return f'{type(err).__name__}: {err}'


def main():
    args = parse_args()
    from mmengine.runner import Runner  # (after parsing: --help answers before torch loads)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.get('custom_imports'):
        sys.exit(f'{args.config} has custom_imports {cfg.custom_imports}: not a stock config')
    cfg.work_dir = args.work_dir or tempfile.mkdtemp(prefix='eval_stock_')
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    # strict: every stock key present, nothing extra (torch.load stays weights_only=True)
    try:
        runner.load_checkpoint(args.checkpoint, map_location='cpu', strict=True)
    except Exception as err:  # noqa: BLE001  (exits naming the file and the fault)
        reason = why_unloadable(args.checkpoint, err)
        sys.exit(f'eval_stock: cannot load {args.checkpoint}: {reason}')
    metrics = runner.test()
    if 'mmssf' in sys.modules:
        sys.exit('mmssf was imported during a stock evaluation')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2)
    print(json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))


if __name__ == '__main__':
    main()
