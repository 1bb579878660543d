"""SPT: compute parameter sensitivity on a config's training data and allocate a budget.

    python tools/analysis_tools/spt_sensitivity.py CONFIG --budget 0.4M [--samples 800]
        [--out DIR] [--kind lora|adapter] [--rank 8] [--alpha 10] [--beta 5 | --no-whole-vectors]
        [--freeze-cls-token] [--seed 0] [--batch-size N] [--device cpu|cuda]
        [--cfg-options k=v ...]

Builds the config's model with its pretrained backbone (an SPT config's method is swapped for
plain full tuning while scoring) and runs one forward + backward per batch over ``--samples``
*training* images fed through the config's *test* pipeline, with no batch augmentation
(Mixup / CutMix) and, for classifiers, plain cross entropy (no label smoothing) — as the
authors' scripts score (eval-mode forward, fixed seed). It then allocates the budget and writes
into ``--out`` (default: the directory of the config's ``peft.allocation``):

    allocation.json            what to tune, budget asked / met, the sensitivity settings
    allocation_indices.pth     indices of the unstructured entries (plain tensors)
    sensitivity_patterns.png   share of sensitive parameters per block and per operation

and prints a summary table. The SPT config then trains with ``peft=dict(type='SPTLoRA',
allocation='DIR/allocation.json')``.
"""
import argparse
import os.path as osp
import time

from mmengine.config import DictAction  # (light: the parser's only need)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='SPT sensitivity and budgeted allocation')
    parser.add_argument('config')
    parser.add_argument('--budget', required=True, help='trainable parameters, e.g. 0.4M or 400k')
    parser.add_argument('--samples', type=int, default=800, help='training samples (C)')
    parser.add_argument('--out', help="output dir (default: the dir of the config's allocation)")
    parser.add_argument('--kind', choices=['lora', 'adapter'],
                        help="structured module (default: from the config's SPT type, else lora)")
    parser.add_argument('--rank', type=int, default=8, help='rank of the structured modules')
    parser.add_argument('--alpha', type=float, default=10.0, help='sigma = structured cost / alpha')
    parser.add_argument('--beta', type=float, default=5.0,
                        help='a bias / norm vector is tuned whole once dim / beta of its entries '
                             'are selected (official 5)')
    parser.add_argument('--no-whole-vectors', action='store_true',
                        help='tune vectors entry-wise only (no beta rule)')
    parser.add_argument('--freeze-cls-token', action='store_true',
                        help='do not train the class token (the official code trains it and '
                             'counts it in the budget)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch-size', type=int,
                        help='scoring batch size (default: the training batch size for '
                             'classifiers, the test batch size for dense tasks)')
    parser.add_argument('--device', help='default: cuda when available, else cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


if __name__ == '__main__':  # --help and argument errors answer here, before the heavy imports
    parse_args()


import torch  # noqa: E402

import mmssf  # noqa: E402,F401  (registers mmssf and applies the stack fixes)
from mmssf.launch import Config  # noqa: E402
from mmssf.peft.spt import allocate, compute_sensitivity, parse_budget  # noqa: E402
from mmssf.peft.spt.report import format_summary, plot_patterns  # noqa: E402
from mmssf.peft.spt.scoring_data import scoring_config  # noqa: E402
from mmssf.peft.spt.sensitivity import EXCLUDED  # noqa: E402
from mmssf.peft.targets import find_table  # noqa: E402

_PEFT_BACKBONE = ('mmssf.PeftBackbone', 'PeftBackbone')
_KIND_OF = {'SPTLoRA': 'lora', 'SPTAdapter': 'adapter'}


def stock_scoring_config(cfg: Config, args):
    """Swap an SPT method for full tuning (names and pretrained weights unchanged); return the
    structured kind and output dir the config implies."""
    backbone = cfg.model.backbone
    kind, out = args.kind, args.out
    if backbone.get('type') in _PEFT_BACKBONE:
        peft = backbone.get('peft', {})
        kind = kind or _KIND_OF.get(peft.get('type'))
        if out is None and peft.get('allocation'):
            out = osp.dirname(peft['allocation']) or '.'
        backbone.peft = dict(type='Full')
    if out is None:
        raise SystemExit('--out is needed: the config names no SPT allocation to write')
    return kind or 'lora', out


def main(argv=None):
    args = parse_args(argv)
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    try:  # bad values fail before the (long) sensitivity pass
        parse_budget(args.budget)
    except ValueError as error:
        raise SystemExit(f'spt_sensitivity.py: --budget: {error}') from None
    if not args.no_whole_vectors and args.beta < 1:
        raise SystemExit(f'spt_sensitivity.py: --beta must be >= 1 (official 5), got {args.beta}; '
                         f'--no-whole-vectors tunes vectors entry-wise only')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    kind, out = stock_scoring_config(cfg, args)
    try:
        cfg, fed = scoring_config(cfg, batch_size=args.batch_size)
    except ValueError as error:
        raise SystemExit(f'spt_sensitivity.py: {args.config}: {error}') from None

    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import Runner, set_random_seed
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    set_random_seed(args.seed)
    model = MODELS.build(cfg.model)
    if hasattr(model, 'init_weights'):
        model.init_weights()
    model.to(args.device)
    if not hasattr(model, 'backbone'):
        raise SystemExit(f'{type(model).__name__} has no .backbone to score')
    table = find_table(model.backbone)
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=args.seed)

    start = time.perf_counter()
    scores, info = compute_sensitivity(model, model.backbone, loader, num_samples=args.samples)
    elapsed = time.perf_counter() - start
    print(f'\nsensitivity: {info["samples"]} samples in {elapsed:.1f} s on {args.device}')

    try:
        alloc = allocate({k: v.cpu() for k, v in scores.items()}, model.backbone, args.budget,
                         kind=kind, rank=args.rank, alpha=args.alpha,
                         beta=None if args.no_whole_vectors else args.beta,
                         train_cls_token=not args.freeze_cls_token)
    except ValueError as error:
        raise SystemExit(f'spt_sensitivity.py: {error}') from None
    alloc.sensitivity = dict(info, seed=args.seed, config=args.config, mode='eval',
                             seconds=round(elapsed, 2), excluded=list(EXCLUDED), **fed)
    path = alloc.save(out)
    plot = plot_patterns(alloc, table, osp.join(out, 'sensitivity_patterns.png'))
    print(format_summary(alloc, table))
    print(f'allocation: {path}\nplot: {plot}')
    return alloc, path


if __name__ == '__main__':
    main()
