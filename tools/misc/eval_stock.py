"""Evaluate a checkpoint with a *stock* config in a process that never imports mmssf.

    python tools/misc/eval_stock.py CONFIG CHECKPOINT [--out metrics.json] [--work-dir DIR]
        [--cfg-options k=v ...]

This is the user's view of a merged checkpoint: plain mmengine Runner, upstream config and
model code, ``torch.load(weights_only=True)``; it fails if anything imported mmssf.
"""
import argparse
import json
import sys
import tempfile

from mmengine.config import Config, DictAction
from mmengine.runner import Runner


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out')
    parser.add_argument('--work-dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.get('custom_imports'):
        sys.exit(f'{args.config} has custom_imports {cfg.custom_imports}: not a stock config')
    cfg.work_dir = args.work_dir or tempfile.mkdtemp(prefix='eval_stock_')
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    # strict: every stock key present, nothing extra (torch.load stays weights_only=True)
    runner.load_checkpoint(args.checkpoint, map_location='cpu', strict=True)
    metrics = runner.test()
    if 'mmssf' in sys.modules:
        sys.exit('mmssf was imported during a stock evaluation')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2)
    print(json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))


if __name__ == '__main__':
    main()
