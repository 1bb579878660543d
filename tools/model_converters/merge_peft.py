"""Merge a checkpoint of a PEFT-tuned config into the stock checkpoint, offline.

    python tools/model_converters/merge_peft.py CONFIG CKPT OUT [--cfg-options k=v ...]

CONFIG is the tuned config CKPT was trained with; CKPT any checkpoint of it (the resumable
``X.pth``, written with or without ``mmssf.ReparamCheckpointHook``). OUT is the same file the hook
writes as ``X_merged.pth``: the stock state dict (backbone keys exactly the stock ones) and a
plain-type meta, loadable with ``weights_only=True`` and ``strict=True`` by the stock config,
which is printed at the end. VPT and Adapter cannot be merged: the tool exits with status 1 and
the reason.

The model is built without loading any pretrained weights (the backbone's ``init_cfg`` and
``pretrained`` are dropped): everything comes from CKPT, which must fit the model exactly.
"""
import argparse
import copy
import os.path as osp
import pickle
import sys

from mmengine.config import Config, DictAction  # (light: the parser's only needs)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='the tuned config CKPT was trained with')
    parser.add_argument('checkpoint', help='a checkpoint of it (X.pth)')
    parser.add_argument('out', help='where to write the merged stock checkpoint')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args(argv)


if __name__ == '__main__':  # --help and argument errors answer here, before the heavy imports
    parse_args()


import mmssf  # noqa: E402,F401  (registers mmssf; weights_only loads of Runner checkpoints)
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402
from mmengine.runner import CheckpointLoader  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402
from mmssf.engine.checkpoint_check import (CheckpointMismatchError, StockCheckpointError,  # noqa: E402
                                           check_checkpoint)
from mmssf.peft.merged_checkpoint import build_merged_checkpoint, merged_meta_from  # noqa: E402
from mmssf.fileio import CheckpointFileError, CheckpointWriteError, atomic_save  # noqa: E402
from mmssf.integrity import seal_checkpoint  # noqa: E402
from mmssf.peft import MergeError  # noqa: E402
from mmssf.stock_config import stock_bases  # noqa: E402

PEFT_TYPES = ('mmssf.PeftBackbone', 'PeftBackbone')
PEFT_ONLY_KEYS = ('type', 'stock_type', 'peft', 'peft_checkpoint')


def peft_backbones(node, path=()):
    """``[(path, cfg)]`` of every ``PeftBackbone`` dict inside a model config."""
    found = []
    if isinstance(node, dict):
        if node.get('type') in PEFT_TYPES:
            found.append((path, node))
        for key, value in node.items():
            found += peft_backbones(value, path + (key, ))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += peft_backbones(value, path + (i, ))
    return found


def stock_backbone(peft_cfg) -> dict:
    """The stock backbone config a ``PeftBackbone`` config stands for."""
    cfg = copy.deepcopy(dict(peft_cfg))
    stock = dict(type=cfg['stock_type'])
    stock.update({k: v for k, v in cfg.items() if k not in PEFT_ONLY_KEYS})
    return stock


def build_model(cfg):
    """The tuned model of ``cfg``, with no pretrained weights loaded."""
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg['custom_imports'])
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model_cfg = copy.deepcopy(cfg.model)
    if 'pretrained' in model_cfg:
        model_cfg['pretrained'] = None
    backbones = peft_backbones(model_cfg)
    if not backbones:
        sys.exit(f'merge_peft: {cfg.filename} tunes nothing: no mmssf.PeftBackbone in its model')
    for _, node in backbones:
        node['init_cfg'] = None  # no pretrained load: CKPT holds every weight
        node.pop('peft_checkpoint', None)
        if 'pretrained' in node:
            node['pretrained'] = None
    if cfg.get('data_preprocessor') is not None and isinstance(model_cfg, dict):
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)  # as the Runner does
    model = MODELS.build(model_cfg)
    model.eval()
    return model


def _get(node, path):
    for key in path:
        node = node[key]
    return node


def stock_config_text(cfg, config_path) -> str:
    """What to evaluate the merged file with: the stock backbone(s) and stock ``_base_``."""
    lines = []
    config_path = osp.abspath(config_path)  # (mmengine resolves a local _base_ against it)
    stock = {path: stock_backbone(node) for path, node in peft_backbones(cfg.model.to_dict())}
    snippet = {}
    for path, backbone in stock.items():
        node = snippet.setdefault('model', {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = backbone
    lines.append('stock model config (the tuned one with the PEFT keys removed):')
    lines += ['    ' + line for line in Config(snippet).pretty_text.strip().splitlines()]
    for base, base_path, base_cfg in stock_bases(config_path):
        if base_cfg is None:
            continue  # unreadable, or not a stock config
        same = all(_safe_get(base_cfg.to_dict().get('model', {}), path) == backbone
                   for path, backbone in stock.items())
        if same:
            lines.append(f'the stock _base_ {base!r} has exactly this backbone: evaluate '
                         f'the merged file with it, e.g. tools/misc/eval_stock.py {base_path} OUT')
        else:
            lines.append(f'the stock _base_ {base!r} differs in the backbone: inherit it and '
                         f'set the backbone above')
    return '\n'.join(lines)


def _safe_get(node, path):
    try:
        return _get(node, path)
    except (KeyError, IndexError, TypeError):
        return None


def main(argv=None):
    args = parse_args(argv)

    MMLogger.get_instance('merge_peft', log_level='WARNING')  # no per-tensor init logs
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_model(cfg)
    try:  # (mmssf's loader: refuses unsafe, empty, truncated or corrupted files, naming them)
        checkpoint = CheckpointLoader.load_checkpoint(args.checkpoint, map_location='cpu')
    except (CheckpointFileError, pickle.UnpicklingError, FileNotFoundError) as err:
        sys.exit(f'merge_peft: {err}')
    try:  # strict: every key of the tuned model, PEFT tensors included, nothing else
        check_checkpoint(model, checkpoint, source=args.checkpoint, purpose='merge',
                         config=args.config)
    except StockCheckpointError as err:  # (a merged / stock file: says what to do with it)
        sys.exit(f'merge_peft: {err}')
    except CheckpointMismatchError as err:
        sys.exit(f'merge_peft: {args.checkpoint} is not a checkpoint of {args.config}:\n{err}')
    meta = merged_meta_from(checkpoint.get('meta', {}))
    try:
        merged = build_merged_checkpoint(model, meta, source=osp.basename(args.checkpoint))
    except MergeError as err:
        sys.exit(f'merge_peft: cannot merge {args.checkpoint}: {err}')
    out_dir = osp.dirname(osp.abspath(args.out))
    if not osp.isdir(out_dir):
        sys.exit(f'merge_peft: output folder {out_dir} does not exist')
    try:
        atomic_save(seal_checkpoint(merged), args.out)
    except CheckpointWriteError as err:
        sys.exit(f'merge_peft: {err}')
    methods = ', '.join(f'{d["type"]} on {p}' for p, d in merged['meta']['mmssf']['methods'].items())
    print(f'merge_peft: {methods} merged; stock checkpoint written to {args.out} '
          f'({len(merged["state_dict"])} tensors)')
    print(stock_config_text(cfg, args.config))


if __name__ == '__main__':
    main()
