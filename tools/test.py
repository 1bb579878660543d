"""Evaluate a checkpoint with any mmpretrain / mmdet / mmseg config (the config's default_scope
decides), with the options of the upstream ``tools/test.py`` of that family.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out OUT] [--out-item pred|metrics]
        [--show] [--show-dir DIR] [--wait-time S] [--interval N] [--tta] [--cfg-options k=v ...]
        [--launcher none|pytorch|slurm|mpi]

``--out`` writes the predictions as upstream does: mmdet / mmpretrain a ``.pkl`` (mmdet's
``DumpDetResults``, mmengine's ``DumpResults``), mmseg a folder of ``.png`` label maps
(``IoUMetric(output_dir=..., keep_results=True)``). ``--out-item metrics`` (mmpretrain's option,
here for every family) writes the metrics instead, in the format of OUT's extension; an OUT
ending in ``.json`` implies it.
"""
import argparse
import os
import os.path as osp
import warnings
from copy import deepcopy

# only the argument parser's needs here: --help answers before torch and mmssf are imported
from mmengine.config import DictAction

FAMILIES = ('mmdet', 'mmseg', 'mmpretrain')


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and eval) a model (mmssf)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs')
    parser.add_argument('--out', help='predictions in the upstream format: a .pkl file (mmdet, '
                        'mmpretrain) or a folder of .png label maps (mmseg); with --out-item '
                        'metrics (or a .json name) the metrics')
    parser.add_argument('--out-item', choices=['pred', 'metrics'],
                        help='what --out holds (default: pred, metrics for a .json name)')
    parser.add_argument('--show', action='store_true',
                        help='show the predictions (needs a display)')
    parser.add_argument('--show-dir', help='save images painted with the predictions here')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds each shown image stays')
    parser.add_argument('--interval', type=int,
                        help="visualize every N samples (default: the config's; mmpretrain 1)")
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation with the config's tta_model / tta_pipeline")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (xxx=[a,b] for lists)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if args.out_item is None:
        args.out_item = 'metrics' if args.out and args.out.endswith('.json') else 'pred'
    return args


def family_of(cfg) -> str:
    scope = cfg.get('default_scope')
    if scope not in FAMILIES:
        raise SystemExit(f'tools/test.py: {cfg.filename} has default_scope={scope!r}; '
                         f'expected one of {FAMILIES}')
    return scope


def show_predictions(cfg, args, family: str) -> None:
    """Turn on the config's VisualizationHook, as the upstream tools do."""
    hook = (cfg.get('default_hooks') or {}).get('visualization')
    if hook is None:
        raise SystemExit('tools/test.py: --show / --show-dir need a VisualizationHook in '
                         "default_hooks (visualization=dict(type='...VisualizationHook'))")
    if args.interval is not None:
        hook['interval'] = args.interval
    if family == 'mmpretrain':  # mmpretrain's hook: enable / out_dir / interval
        hook.update(enable=True, interval=args.interval or 1)
        if args.show_dir:
            hook['out_dir'] = args.show_dir
    else:
        hook['draw'] = True
        if args.show_dir and family == 'mmdet':
            hook['test_out_dir'] = args.show_dir
        elif args.show_dir:  # mmseg: the visualizer saves where it is told
            cfg.visualizer['save_dir'] = args.show_dir
    if args.show:
        hook.update(show=True, wait_time=args.wait_time)


def test_time_augmentation(cfg, family: str) -> None:
    """Wrap the model in the config's ``tta_model`` and test with its ``tta_pipeline``; where
    upstream mmdet / mmpretrain have defaults (flip TTA), they are used when these are absent."""
    missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
    if family == 'mmseg' and missing:
        raise SystemExit(f'tools/test.py --tta: {cfg.filename} has no {" / ".join(missing)} '
                         f'(mmseg configs define them, e.g. the stock ADE20K configs)')
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # (dataset wrappers)
        dataset = dataset['dataset']
    if 'tta_model' not in cfg:
        warnings.warn('no tta_model in the config: using the upstream default')
        cfg.tta_model = (dict(type='DetTTAModel', tta_cfg=dict(
            nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)) if family == 'mmdet'
            else dict(type='mmpretrain.AverageClsScoreTTA'))
    if 'tta_pipeline' not in cfg:
        warnings.warn('no tta_pipeline in the config: using flip TTA of the test pipeline')
        pack = (dict(type='PackDetInputs', meta_keys=(
            'img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
            'flip_direction')) if family == 'mmdet' else dataset.pipeline[-1])
        cfg.tta_pipeline = deepcopy(dataset.pipeline)
        cfg.tta_pipeline[-1] = dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)], [pack]])
    tta_model = dict(cfg.tta_model)
    tta_model['module'] = cfg.model
    cfg.model = tta_model
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def check_out(out: str, family: str) -> None:
    if family != 'mmseg' and not out.endswith(('.pkl', '.pickle')):
        raise SystemExit(f'tools/test.py: --out {out}: predictions are written as a pickle '
                         f'(.pkl / .pickle), as upstream {family} does; for metrics use '
                         f'--out-item metrics')


def dump_predictions(cfg, runner, out: str, family: str) -> None:
    if family == 'mmseg':
        return  # (set in the config before the runner is built: the evaluator writes them)
    if family == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    else:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))


def main():
    args = parse_args()
    import mmssf  # noqa: F401  (registers mmssf and applies the stack fixes)
    from mmssf.download import WeightDownloadError, with_config_keys
    from mmssf.engine.checkpoint_check import CheckpointMismatchError, add_checkpoint_check
    from mmssf.fileio import CheckpointFileError
    from mmssf.launch import Config, missing_checkpoint, setup_launcher

    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    family = family_of(cfg)
    if args.out and args.out_item == 'pred':
        check_out(args.out, family)
    setup_launcher(cfg, args.launcher)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        show_predictions(cfg, args, family)
    if args.tta:
        test_time_augmentation(cfg, family)
    if args.out and args.out_item == 'pred' and family == 'mmseg':
        evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) \
            else [cfg.test_evaluator]
        for evaluator in evaluators:  # (upstream mmseg: IoUMetric writes the label maps)
            evaluator['output_dir'] = args.out
            evaluator['keep_results'] = True

    problem = missing_checkpoint(args.checkpoint, 'checkpoint')
    if problem:  # (before the datasets load)
        raise SystemExit(f'tools/test.py: {problem}')
    add_checkpoint_check(cfg)  # misfitting load_from / --resume / test checkpoints are errors

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    try:  # (building loads a PeftBackbone's pretrained weights)
        runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
        if args.out and args.out_item == 'pred':
            dump_predictions(cfg, runner, args.out, family)
        metrics = runner.test()
    except WeightDownloadError as err:  # offline: which config key to point at a local file
        raise SystemExit(f'tools/test.py: {with_config_keys(err, cfg)}') from None
    except (CheckpointFileError, CheckpointMismatchError) as err:
        # (unreadable, corrupted or misfitting checkpoint, e.g. a merged one with the tuned
        # config: the message says which file, why, and what to run instead)
        raise SystemExit(f'tools/test.py: {err}') from None
    if args.out and args.out_item == 'metrics' and runner.rank == 0:
        import mmengine
        options = dict(indent=2) if args.out.endswith('.json') else {}
        mmengine.dump({k: _to_number(v) for k, v in metrics.items()}, args.out, **options)


def _to_number(value):
    try:
        return float(value)  # python and numpy scalars, 0-d tensors
    except (TypeError, ValueError):
        return str(value)


if __name__ == '__main__':
    main()
