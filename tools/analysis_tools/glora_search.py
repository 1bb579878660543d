"""GLoRA: train a supernet on a config's data, then search per-layer supports under a limit.

    python tools/analysis_tools/glora_search.py CONFIG --params 0.3M [--out DIR] [--rank 4]
        [--min-params 0] [--supernet CKPT] [--work-dir DIR] [--metric KEY]
        [--epochs 20] [--population 50] [--select 10] [--mutation 25] [--crossover 25]
        [--m-prob 0.2] [--seed 0] [--cfg-options k=v ...]

The official two-step recipe (Chavan et al., "One-for-All: Generalized LoRA for
Parameter-Efficient Fine-tuning", 2023; Arnav0400/ViT-Slim ``GLoRA/supernet.py`` then
``GLoRA/evolution.py``):

1. *Supernet*: the config's model with its method swapped for ``GLoRA(supernet=True, r=RANK)``
   (every support's tensors at the largest size, one support drawn per layer and forward; the
   config's GLoRA ``targets`` are kept) trains with the config's own recipe through the mmengine
   Runner (work dir ``--work-dir``, default ``DIR/supernet``; no merged checkpoint twins: a
   supernet does not merge). ``--supernet CKPT`` skips this step and loads a trained one.
2. *Search*: the evolutionary search of :mod:`mmssf.peft.glora_evolution` over candidates whose
   trainable count (official ``get_param``) lies within ``[--min-params, --params]``, each scored
   by the config's ``val_evaluator`` on its ``val_dataloader`` with the supernet's weights read at
   the candidate's supports (official: top-1 accuracy; ``--metric`` picks the key, default the
   evaluator's first).

It writes ``DIR/glora_support.json`` (:class:`mmssf.peft.glora.GLoRASupport`, atomically; default
``DIR``: the directory of the config's ``peft.support``), which the GLoRA config then trains
with: ``peft=dict(type='GLoRA', support='DIR/glora_support.json')``.
"""
import argparse
import os.path as osp
import time

from mmengine.config import DictAction  # (light: the parser's only need)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='GLoRA supernet training and support search')
    parser.add_argument('config')
    parser.add_argument('--params', required=True,
                        help='limit on the supports\' trainable parameters, e.g. 0.3M or 300k '
                             '(official --param-limits, in M)')
    parser.add_argument('--min-params', default='0', help='lower limit (official 0)')
    parser.add_argument('--out', help="output dir (default: the dir of the config's "
                                      "peft.support)")
    parser.add_argument('--rank', type=int, default=4, help="r of the 'lora' supports (official 4)")
    parser.add_argument('--supernet', help='a trained supernet checkpoint: skip its training')
    parser.add_argument('--work-dir', help='supernet work dir (default: OUT/supernet)')
    parser.add_argument('--metric', help="val metric to maximise (default: the evaluator's first)")
    parser.add_argument('--epochs', type=int, default=20, help='search rounds (official 20)')
    parser.add_argument('--population', type=int, default=50, help='official 50')
    parser.add_argument('--select', type=int, default=10, help='parents kept (official 10)')
    parser.add_argument('--mutation', type=int, default=25, help='official 25')
    parser.add_argument('--crossover', type=int, default=25, help='official 25')
    parser.add_argument('--m-prob', type=float, default=0.2, help='mutation probability (0.2)')
    parser.add_argument('--seed', type=int, default=0, help="the search's draws")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


if __name__ == '__main__':  # --help and argument errors answer here, before the heavy imports
    parse_args()


import torch  # noqa: E402

import mmssf  # noqa: E402,F401  (registers mmssf and applies the stack fixes)
from mmssf.launch import Config  # noqa: E402
from mmssf.peft.base import get_peft  # noqa: E402
from mmssf.peft.glora import GLoRASupport, backbone_fingerprint  # noqa: E402
from mmssf.peft.glora_evolution import GLoRAEvolution  # noqa: E402
from mmssf.peft.spt import parse_budget  # noqa: E402

_PEFT_BACKBONE = ('mmssf.PeftBackbone', 'PeftBackbone')
_NO_SUPERNET_HOOKS = ('ReparamCheckpointHook', )  # (a supernet has no merged twin)


def fail(message):
    raise SystemExit(f'glora_search.py: {message}')


def count(text, flag):
    try:
        value = parse_budget(text)
    except ValueError:
        fail(f'{flag}: cannot read {text!r} as a number of parameters: use e.g. 0.3M, 300k or '
             f'300000 (at least 1)')
    return value


def check_args(args):
    limit = count(args.params, '--params')
    low = 0 if str(args.min_params).strip() in ('0', '0.0') else count(args.min_params,
                                                                       '--min-params')
    if low > limit:
        fail(f'--min-params {args.min_params} exceeds --params {args.params}')
    for flag in ('rank', 'population', 'select'):
        if getattr(args, flag) < 1:
            fail(f'--{flag} must be >= 1, got {getattr(args, flag)}')
    for flag in ('epochs', 'mutation', 'crossover'):
        if getattr(args, flag) < 0:
            fail(f'--{flag} must be >= 0, got {getattr(args, flag)}')
    if not 0 <= args.m_prob <= 1:
        fail(f'--m-prob must be in [0, 1], got {args.m_prob}')
    if args.supernet and not osp.isfile(args.supernet):
        fail(f'--supernet {args.supernet} does not exist (drop it to train the supernet)')
    return limit, low


def supernet_config(cfg: Config, args) -> str:
    """Swap the config's method for the GLoRA supernet (GLoRA targets kept); return the output
    dir."""
    backbone = cfg.model.get('backbone', {})
    if backbone.get('type') not in _PEFT_BACKBONE:
        fail(f'{args.config}: model.backbone is a {backbone.get("type")!r}, not an '
             f'mmssf.PeftBackbone: the search tunes the backbone of a PEFT config (e.g. '
             f'configs/glora/)')
    for key in ('val_dataloader', 'val_evaluator'):
        if not cfg.get(key):
            fail(f'{args.config} has no {key}: the search scores candidates on the val split')
    peft = backbone.get('peft') or {}
    out = args.out
    if out is None and peft.get('support'):
        out = osp.dirname(peft['support']) or '.'
    if out is None:
        fail('--out is needed: the config names no GLoRA support file to write')
    supernet = dict(type='GLoRA', supernet=True, r=args.rank)
    if peft.get('type') == 'GLoRA' and peft.get('targets') is not None:
        supernet['targets'] = peft['targets']
    backbone.peft = supernet
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', [])
                        if str(h.get('type', '')).split('.')[-1] not in _NO_SUPERNET_HOOKS]
    cfg.work_dir = args.work_dir or osp.join(out, 'supernet')
    return out


class ValScorer:
    """Scores a support on the config's val split with its evaluator (as the Runner's ValLoop,
    without its hooks: no checkpoint or logging side effects per candidate)."""

    def __init__(self, runner, model, metric=None):
        self.model = model
        self.loader = runner.build_dataloader(runner.cfg.val_dataloader, seed=runner.seed)
        self.evaluator = runner.build_evaluator(runner.cfg.val_evaluator)
        dataset = self.loader.dataset
        if hasattr(dataset, 'metainfo'):
            self.evaluator.dataset_meta = dataset.metainfo
        self.size = len(dataset)
        self.metric = metric

    @torch.no_grad()
    def __call__(self, method, supports):
        method.set_supports(supports)
        self.model.eval()
        for batch in self.loader:
            outputs = self.model.val_step(batch)
            self.evaluator.process(data_samples=outputs, data_batch=batch)
        metrics = self.evaluator.evaluate(self.size)
        if self.metric is None:
            self.metric = next(iter(metrics))
        if self.metric not in metrics:
            fail(f'--metric {self.metric!r} is not among the val metrics '
                 f'{", ".join(map(repr, metrics))}')
        return float(metrics[self.metric])


def main(argv=None):
    args = parse_args(argv)
    limit, low = check_args(args)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    out = supernet_config(cfg, args)

    from mmengine.model import is_model_wrapper
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from mmssf.engine.atomic_checkpoint import use_atomic_checkpoints
    use_atomic_checkpoints(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    start = time.perf_counter()
    if args.supernet:
        runner.load_checkpoint(args.supernet)
        trained = dict(loaded=args.supernet)
    else:
        runner.train()
        trained = dict(work_dir=cfg.work_dir, iters=runner.iter, epochs=runner.epoch)
    supernet_seconds = time.perf_counter() - start
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    method = get_peft(model.backbone)
    if method is None or not getattr(method, 'supernet', False):
        fail('the built backbone carries no GLoRA supernet')

    scorer = ValScorer(runner, model, args.metric)
    search = GLoRAEvolution(
        method.layers(), args.rank, lambda s: scorer(method, s), max_params=limit,
        min_params=low, epochs=args.epochs, population=args.population, select=args.select,
        mutation=args.mutation, crossover=args.crossover, m_prob=args.m_prob, seed=args.seed,
        log=lambda line: runner.logger.info(f'glora search: {line}'))
    start = time.perf_counter()
    try:
        supports, summary = search.search()
    except ValueError as error:
        fail(str(error))
    method.set_supports(None)
    summary.update(metric=scorer.metric, seconds=round(time.perf_counter() - start, 2),
                   supernet=dict(trained, seconds=round(supernet_seconds, 2)),
                   config=args.config, seed=args.seed)
    support = GLoRASupport(rank=args.rank, supports=supports,
                           backbone=backbone_fingerprint(model.backbone, list(supports)),
                           params=summary['params'], search=summary)
    path = support.save(out)
    print(f'GLoRA support: {summary["params"]} trainable parameters (limit {limit}), val '
          f'{scorer.metric} {summary["score"]:.4f} of {summary["evaluated"]} candidates\n'
          f'support file: {path}')
    return support, path


if __name__ == '__main__':
    main()
