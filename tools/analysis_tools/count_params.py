"""Count the trainable and total parameters of a config's model, without loading any weights.

    python tools/analysis_tools/count_params.py CONFIG [CONFIG ...] [--cfg-options k=v ...]

The model is built as training builds it (mmssf imported, the config's ``custom_imports`` and
``default_scope``, the registry's ``model`` entry, ``PeftBackbone`` applying and freezing the
method), but with no Runner and no data. Every pretrained source is switched off first — the
backbone's ``init_cfg``, any ``init_cfg`` of type ``Pretrained``, ``pretrained`` paths and a
``peft_checkpoint`` — so nothing is read or downloaded; the output says which keys were dropped.
Counts do not depend on weight values, so mmengine's ``init_weights`` is skipped as well (it only
redraws values; about 2 s per ViT-B on 2 cores).

Prints, per config, the per-group table (a tuned backbone is one row, labelled with its method,
whose trainable column is what the method trains; necks and heads follow) and the summary line
``trainable params: N || all params: M || trainable%: P``.

SPT configs need the allocation written by ``tools/analysis_tools/spt_sensitivity.py``; when it
is missing the tool says so and which command writes it. With several configs the exit status is
1 if any failed (the others are still counted). Counting many configs in one call is cheaper than
one call each: imports and mmengine's ``pkg::`` base-config lookups are shared.
"""
import argparse
import contextlib
import copy
import os.path as osp
import sys
import traceback

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:  # run from a checkout without installing mmssf
    sys.path.insert(0, ROOT)

from mmengine.config import DictAction  # noqa: E402  (light: the parser's only need)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Count trainable / total parameters of a config\'s model (no weights loaded)')
    parser.add_argument('configs', nargs='+', metavar='CONFIG', help='config file(s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (xxx=[a,b] for lists); '
                        'applied to every config')
    return parser.parse_args(argv)


if __name__ == '__main__':  # --help and argument errors answer here, before the heavy imports
    parse_args()


import mmssf  # noqa: E402,F401  (registers mmssf, applies the stack fixes)
from mmengine.config import Config  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402

from mmssf.engine.report_hook import format_report  # noqa: E402


def _is_pretrained_init(value) -> bool:
    if isinstance(value, dict):
        kind = value.get('type')
        return isinstance(kind, str) and kind.rsplit('.', 1)[-1] == 'Pretrained'
    if isinstance(value, (list, tuple)):
        return any(_is_pretrained_init(v) for v in value)
    return False


def drop_pretrained(model_cfg) -> list:
    """Switch off every weight source in ``model_cfg`` (in place); return what was dropped.

    The backbone's ``init_cfg`` always becomes None (a stock ViT's Kaiming list as much as a
    ``Pretrained`` one); elsewhere an ``init_cfg`` that loads a checkpoint, any ``pretrained``
    path (mmseg / mmdet model level, deprecated backbone argument), ``peft_checkpoint`` and a
    timm wrapper's ``checkpoint_path`` / ``pretrained=True`` (``TIMMBackbone``).
    """
    dropped = []

    def note(path, value):
        shown = value.get('checkpoint', value.get('type')) if isinstance(value, dict) else value
        dropped.append(f'{path} (was {shown!r})' if isinstance(shown, str) else path)

    backbone = model_cfg.get('backbone') if isinstance(model_cfg, dict) else None
    if isinstance(backbone, dict) and backbone.get('init_cfg') is not None:
        init = backbone['init_cfg']
        first = init[0] if isinstance(init, (list, tuple)) and init else init
        note('model.backbone.init_cfg', first)
        backbone['init_cfg'] = None

    def walk(node, path):
        if isinstance(node, dict):
            for key in list(node):
                value, sub = node[key], f'{path}.{key}'
                if key == 'init_cfg' and _is_pretrained_init(value):
                    note(sub, value if isinstance(value, dict) else
                         next(v for v in value if _is_pretrained_init(v)))
                    node[key] = None
                elif key in ('pretrained', 'peft_checkpoint') and isinstance(value, str):
                    note(sub, value)
                    node[key] = None
                elif key == 'checkpoint_path' and value:  # (timm wrappers: timm loads it)
                    note(sub, value)
                    node[key] = ''
                elif key == 'pretrained' and value is True:  # (timm: a hub or a local file)
                    note(sub, (node.get('pretrained_cfg_overlay') or {}).get('file', True))
                    node[key] = False
                else:
                    walk(value, sub)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f'{path}[{i}]')

    walk(model_cfg, 'model')
    return dropped


class MissingAllocation(RuntimeError):
    """An SPT config whose allocation file has not been written yet."""


def check_spt_allocation(model_cfg, config_path):
    """Raise :class:`MissingAllocation` when an SPT method's ``allocation`` file (or GLoRA's
    ``support`` file) does not exist."""

    def walk(node):
        if isinstance(node, dict):
            kind = node.get('type')
            alloc = node.get('allocation')
            if isinstance(alloc, str) and osp.isdir(alloc):  # the method accepts the directory
                alloc = osp.join(alloc, 'allocation.json')
            if isinstance(kind, str) and kind.startswith('SPT') and isinstance(alloc, str) \
                    and not osp.isfile(alloc):
                raise MissingAllocation(
                    f'{kind} needs the allocation file {alloc!r}, which does not exist. Run the '
                    f'sensitivity analysis first (it writes that file):\n'
                    f'    python tools/analysis_tools/spt_sensitivity.py {config_path} '
                    f'--budget 0.4M')
            support = node.get('support')
            if isinstance(support, str) and osp.isdir(support):
                support = osp.join(support, 'glora_support.json')
            if kind == 'GLoRA' and isinstance(support, str) and not osp.isfile(support):
                raise MissingAllocation(
                    f'GLoRA needs the support file {support!r}, which does not exist. Run the '
                    f'supernet training and search first (it writes that file):\n'
                    f'    python tools/analysis_tools/glora_search.py {config_path} '
                    f'--params 0.3M')
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(model_cfg)


@contextlib.contextmanager
def mmengine_init_skipped():
    """``BaseModule.init_weights`` (what ``PeftBackbone`` calls at construction) does nothing.

    With no checkpoint to load, it would only redraw values (and log a mean of every tensor,
    about 2 s for a ViT-B on 2 cores); it creates no parameters, so counts are unchanged.
    """
    from mmengine.model import BaseModule
    original = BaseModule.init_weights
    BaseModule.init_weights = lambda self: None
    try:
        yield
    finally:
        BaseModule.init_weights = original


@contextlib.contextmanager
def metafile_lookups_cached():
    """Memoise mmengine's ``pkg::`` config lookup while several configs are read.

    mmengine re-reads every ``metafile.yml`` of the package for each ``mmpretrain::`` /
    ``mmdet::`` / ``mmseg::`` base (~0.3 s each, three per CIFAR-100 config); the answer only
    depends on the installed package and the path asked.
    """
    from mmengine.config import utils
    original = getattr(utils, '_get_cfg_metainfo', None)
    if original is None:  # another mmengine: nothing to speed up
        yield
        return
    cache = {}

    def cached(package_path, cfg_path):
        key = (package_path, cfg_path)
        if key not in cache:
            try:
                cache[key] = original(package_path, cfg_path)
            except ValueError as err:  # "not a metafile config": mmengine then tries _base_
                cache[key] = err
        if isinstance(cache[key], ValueError):
            raise cache[key]
        return copy.deepcopy(cache[key])

    utils._get_cfg_metainfo = cached
    try:
        yield
    finally:
        utils._get_cfg_metainfo = original


def build_model(cfg, config_path='CONFIG'):
    """``(model, dropped)``: the config's model built with every weight source switched off."""
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model_cfg = copy.deepcopy(cfg.model)
    dropped = drop_pretrained(model_cfg)
    check_spt_allocation(model_cfg, config_path)
    if cfg.get('data_preprocessor') is not None and isinstance(model_cfg, dict):
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))  # as Runner
    with mmengine_init_skipped():
        return MODELS.build(model_cfg), dropped


def count(config_path, cfg_options=None) -> str:
    """The report for one config (raises on failure)."""
    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model, dropped = build_model(cfg, config_path)
    if dropped:
        note = 'no weights loaded or downloaded: set to None ' + '; '.join(dropped)
    else:
        note = 'no weights loaded or downloaded (the config names no pretrained weights)'
    return f'{note}\n{format_report(model)}'


def count_all(paths, cfg_options=None) -> list:
    """Print the report of every config; return those that failed (each error is printed)."""
    failed = []
    for i, path in enumerate(paths):
        if len(paths) > 1:
            print(f'{chr(10) if i else ""}== {path}', flush=True)
        try:
            print(count(path, cfg_options), flush=True)
        except MissingAllocation as err:
            print(f'error: {path}: {err}', file=sys.stderr, flush=True)
            failed.append(path)
        except Exception:  # noqa: BLE001  (report every config, fail at the end)
            print(f'error: {path}: could not build the model:\n{traceback.format_exc()}',
                  file=sys.stderr, flush=True)
            failed.append(path)
    return failed


def main(argv=None):
    args = parse_args(argv)
    # the report is the output: keep mmengine's per-parameter init log (INFO) out of it
    MMLogger.get_instance('count_params', log_level='WARNING')
    with metafile_lookups_cached():
        failed = count_all(args.configs, args.cfg_options)
    if failed and len(args.configs) > 1:
        print(f'\n{len(failed)} of {len(args.configs)} configs failed: {", ".join(failed)}',
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
