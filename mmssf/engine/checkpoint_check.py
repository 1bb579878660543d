"""Refuse checkpoints that do not fit the model instead of going on with random weights.

mmengine's Runner loads ``load_from``, ``--resume`` and the test checkpoint with
``strict=False``: keys that do not fit are *logged* and the run trains or evaluates on with the
randomly initialised tensors. :class:`CheckpointCheckHook` makes that an error, and names the
methods when a PEFT checkpoint meets a config tuned with another one. ``tools/train.py`` and
``tools/test.py`` add it to every config (:func:`add_checkpoint_check`).

What is accepted, besides an exact fit:

* ``load_from`` a checkpoint without PEFT tensors (a stock / fully fine-tuned model, an
  ``X_merged.pth``) into a tuned model *for training*: the PEFT tensors keep their initial
  values — that is how tuning starts from a full-model checkpoint (one log line says so; the
  Runner's list of "missing" PEFT keys is not printed). Nothing else accepts it
  (:class:`StockCheckpointError`): ``--resume`` continues a run whose PEFT tensors are not in
  that file; testing it with the tuned config would evaluate freshly initialised PEFT tensors
  — on an ``X_merged.pth``, the method applied a second time on weights that already hold it
  (a silently wrong result); ``merge_peft.py`` has nothing to merge.
* BN ``num_batches_tracked`` missing (mmengine ignores it too).
* keys matching the hook's ``allow_mismatch`` regexes, e.g. the heads re-initialised for
  another number of classes:
  ``dict(type='mmssf.CheckpointCheckHook', allow_mismatch=[r'bbox_head\\.fc_cls'])``, or the
  config's ``checkpoint_allow_mismatch`` (added to the hook's; on the command line
  ``--cfg-options "checkpoint_allow_mismatch=[^roi_head\\.mask_head\\.conv_logits\\.]"``). The
  error lists the regexes that cover exactly the misfitting modules.

Everything else missing, unexpected or mis-shaped is an error listing the keys. The check loads
the state dict the way the Runner is about to (same recursion, the modules' own version /
resizing hooks included), so what it reports is exactly what the Runner would have only warned
about.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner.base_loop import BaseLoop
from torch.nn.modules.module import _IncompatibleKeys

from ..peft.model_merge import tuned_submodules
from ..peft.registry_facts import methods_of_tensor
from ..peft.merged_checkpoint import record_peft_meta
from ..registry import HOOKS
from ..stock_config import stock_command

__all__ = ['CheckpointCheckHook', 'CheckpointMismatchError', 'PURPOSES', 'StockCheckpointError',
           'add_checkpoint_check', 'check_checkpoint', 'load_report']

_SIZE_MISMATCH = re.compile(r'size mismatch for (\S+?): copying a param with shape (.+?) from '
                            r'checkpoint, the shape in current model is (.+?)\.$')
_LIST = 12

#: what a checkpoint is loaded for: it decides whether a stock / merged one is accepted
PURPOSES = ('load_from', 'resume', 'test', 'merge')


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model it is loaded into."""


class StockCheckpointError(CheckpointMismatchError):
    """A merged / stock checkpoint (none of the config's PEFT tensors) given to test, resume or
    merge a tuned config: only ``load_from`` (to start tuning) accepts it."""


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def state_dict_of(checkpoint, revise_keys=((r'^module\.', ''), )) -> 'OrderedDict':
    """The state dict the Runner loads from ``checkpoint`` (same unwrapping and key revision)."""
    state_dict = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
    metadata = getattr(state_dict, '_metadata', OrderedDict())
    for pattern, repl in revise_keys:
        state_dict = OrderedDict((re.sub(pattern, repl, k), v) for k, v in state_dict.items())
    state_dict._metadata = metadata
    return state_dict


def load_report(model, state_dict) -> dict:
    """Load ``state_dict`` into ``model`` as mmengine's ``load_state_dict`` does; report misfits.

    Returns ``dict(missing=[...], unexpected=[...], mismatched=[(key, ckpt_shape, model_shape)],
    errors=[...])``. Tensors that fit are copied into ``model`` (the Runner copies the same values
    again right after, so checking first changes nothing).
    """
    missing, unexpected, errors = [], [], []
    metadata = getattr(state_dict, '_metadata', None)
    state_dict = OrderedDict(state_dict)
    if metadata is not None:
        state_dict._metadata = metadata

    def load(module, local_state_dict, prefix=''):
        if is_model_wrapper(module) or isinstance(module, BaseTTAModel):
            module = module.module
        local_metadata = {} if metadata is None else metadata.get(prefix[:-1], {})
        module._load_from_state_dict(local_state_dict, prefix, local_metadata, True, missing,
                                     unexpected, errors)
        for name, child in module._modules.items():
            if child is not None:
                child_prefix = prefix + name + '.'
                load(child, {k: v for k, v in local_state_dict.items()
                             if k.startswith(child_prefix)}, child_prefix)
        incompatible = _IncompatibleKeys(missing, unexpected)
        for hook in module._load_state_dict_post_hooks.values():
            hook(module, incompatible)

    with torch.no_grad():
        load(model, state_dict)
    mismatched, other = [], []
    for msg in errors:
        found = _SIZE_MISMATCH.search(str(msg).strip())
        if found:
            mismatched.append(found.groups())
        else:
            other.append(str(msg))
    return dict(missing=missing, unexpected=unexpected, mismatched=mismatched, errors=other)


def model_methods(model) -> Dict[str, str]:
    """``{prefix: method type}`` of every tuned module of ``model``."""
    return {prefix or '<root>': type(method).__name__
            for prefix, _, method in tuned_submodules(_unwrap(model))}


def recorded_methods(checkpoint) -> Optional[Dict[str, str]]:
    """``{prefix: method type}`` recorded in a checkpoint's meta, or None if it records nothing."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    info = meta.get('mmssf') if isinstance(meta, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get('methods'), dict):
        return None
    return {prefix: (desc.get('type') if isinstance(desc, dict) else str(desc))
            for prefix, desc in info['methods'].items()}


def peft_keys(model) -> List[str]:
    """Full state-dict keys of the PEFT tensors of ``model``."""
    keys = []
    for prefix, backbone, method in tuned_submodules(_unwrap(model)):
        dot = prefix + '.' if prefix else ''
        keys += [dot + k for k in method.peft_state_dict(backbone)]
    return keys


def _looks_like_peft(key: str) -> Optional[str]:
    """The method(s) that add tensors named like ``key`` (declared on their classes), or None."""
    return methods_of_tensor(key)


def _describe(methods: Dict[str, str]) -> str:
    if not methods:
        return 'no PEFT method (a stock model)'
    return ', '.join(f'{t} on {p}' for p, t in sorted(methods.items()))


def _short(keys: Sequence[str]) -> str:
    keys = list(keys)
    more = f' ... ({len(keys) - _LIST} more)' if len(keys) > _LIST else ''
    return ', '.join(keys[:_LIST]) + more


def check_checkpoint(model, checkpoint, source: str = 'checkpoint', purpose: str = 'load_from',
                     allow_mismatch: Sequence[str] = (), config: Optional[str] = None,
                     logger='current', resume: bool = False) -> dict:
    """Raise :class:`CheckpointMismatchError` unless ``checkpoint`` fits ``model`` (see module doc).

    ``purpose`` is one of :data:`PURPOSES` (``resume=True`` is short for ``purpose='resume'``);
    only ``'load_from'`` accepts a checkpoint without the model's PEFT tensors. ``config`` (the
    tuned config's path) only serves to name its stock ``_base_`` in the messages. ``model``
    receives the tensors that fit (as the Runner's own load would). Returns the
    :func:`load_report` after the allowed misfits are removed (all lists empty) plus
    ``initial_peft``: the PEFT keys left at their initial values.
    """
    if resume:
        purpose = 'resume'
    if purpose not in PURPOSES:
        raise ValueError(f'check_checkpoint: purpose={purpose!r}; expected one of {PURPOSES}')
    resume = purpose == 'resume'
    model = _unwrap(model)
    state_dict = state_dict_of(checkpoint)
    current, saved = model_methods(model), recorded_methods(checkpoint)
    own_peft = set(peft_keys(model))
    # the tensors the methods add (named with their registered prefixes); own_peft also holds
    # the stock tensors some methods train (BitFit's biases, SPT's class token), which every
    # stock checkpoint has
    own_added = {k for k in own_peft if _looks_like_peft(k)}
    foreign_peft = {k: _looks_like_peft(k) for k in state_dict if k not in own_peft}
    foreign_peft = {k: m for k, m in foreign_peft.items() if m}
    holds_peft = bool(foreign_peft) or any(k in state_dict for k in own_added)
    action = 'resume from' if resume else 'load'

    if saved is not None and sorted(saved.items()) != sorted(current.items()) \
            and (resume or holds_peft):
        if not saved:
            advice = ('--resume continues a run with the config it was trained with; to start '
                      'tuning from these weights, use load_from')
        elif not current:
            advice = ('use it with the tuned config it was trained with, or use its merged stock '
                      'checkpoint (X_merged.pth, or tools/model_converters/merge_peft.py) with '
                      'this stock config')
        else:
            advice = ('a PEFT checkpoint only fits a config with the same method; to start '
                      'another method from its weights, load its merged stock checkpoint '
                      '(X_merged.pth, or tools/model_converters/merge_peft.py) with load_from')
        raise CheckpointMismatchError(
            f'mmssf: cannot {action} {source}: it was trained with {_describe(saved)}, but this '
            f'config tunes with {_describe(current)}. {advice[0].upper() + advice[1:]}.')

    if own_added and not holds_peft and purpose != 'load_from':
        raise StockCheckpointError(_stock_message(purpose, source, checkpoint, current,
                                                  len(own_added), config))

    report = load_report(model, state_dict)
    allowed = [re.compile(p) for p in allow_mismatch]

    def keep(key):
        return not any(p.search(key) for p in allowed)

    missing = [k for k in report['missing'] if 'num_batches_tracked' not in k and keep(k)]
    initial_peft = []
    if purpose == 'load_from' and not holds_peft:
        initial_peft = [k for k in missing if k in own_added]
        missing = [k for k in missing if k not in own_added]
    unexpected = [k for k in report['unexpected'] if keep(k)]
    mismatched = [m for m in report['mismatched'] if keep(m[0])]
    if missing or unexpected or mismatched or report['errors']:
        lines = [f'mmssf: {source} does not fit the model (mmengine would only warn and '
                 f'{"resume" if resume else "go on"} with randomly initialised tensors):']
        if missing:
            lines.append(f'  missing in the checkpoint ({len(missing)}): {_short(missing)}')
        if unexpected:
            lines.append(f'  unexpected, not in the model ({len(unexpected)}): '
                         f'{_short(unexpected)}')
        if mismatched:
            lines.append(f'  shape mismatch ({len(mismatched)}): ' + _short(
                [f'{k} (checkpoint {a}, model {b})' for k, a, b in mismatched]))
        lines += [f'  {e.strip()}' for e in report['errors']]
        lines += _hints(model, current, saved, foreign_peft, missing, own_peft, resume)
        misfits = [k for k in missing + unexpected + [m[0] for m in mismatched]
                   if k not in own_added and k not in foreign_peft]
        lines += _allow_hint(mismatch_patterns(misfits), allow_mismatch)
        raise CheckpointMismatchError('\n'.join(lines))
    if initial_peft:
        print_log(f'mmssf: load_from {source} holds no PEFT tensors (a stock or merged '
                  f'checkpoint): tuning starts from its weights; for {_describe(current)}, '
                  f'{len(initial_peft)} PEFT tensors start from their initial values',
                  logger=logger)
    return dict(missing=[], unexpected=[], mismatched=[], errors=[], initial_peft=initial_peft)


def mismatch_patterns(keys: Sequence[str], limit: int = _LIST) -> List[str]:
    """``allow_mismatch`` regexes covering exactly the modules of ``keys``:
    ``roi_head.mask_head.conv_logits.weight`` -> ``^roi_head\\.mask_head\\.conv_logits\\.``
    (a top-level tensor: ``^cls_token$``). Past ``limit`` modules, their parents are named."""
    leaves = sorted({k for k in keys if '.' not in k})
    modules = sorted({k.rsplit('.', 1)[0] for k in keys if '.' in k})
    while len(modules) + len(leaves) > limit:
        parents = sorted({m.rsplit('.', 1)[0] for m in modules if '.' in m}
                         | {m for m in modules if '.' not in m})
        if parents == modules:
            break
        modules = parents
    return ['^' + re.escape(m) + r'\.' for m in modules] + \
        ['^' + re.escape(k) + '$' for k in leaves]


def _allow_hint(patterns: List[str], allowed: Sequence[str]) -> List[str]:
    """How to accept exactly these misfits on purpose (a head re-initialised for another number
    of classes ...): the command-line option and the config line, with the computed regexes."""
    if not patterns:
        return []
    in_config = ', '.join("r'" + p + "'" for p in patterns)
    lines = ['  To accept these misfits on purpose (e.g. heads re-initialised for another number '
             'of classes, which then start from their initial values): --cfg-options '
             f'"checkpoint_allow_mismatch=[{",".join(patterns)}]", or in the config '
             f'checkpoint_allow_mismatch = [{in_config}] '
             "(the same as allow_mismatch of dict(type='mmssf.CheckpointCheckHook') in "
             'custom_hooks)']
    if allowed:
        lines.append(f'  (allow_mismatch now: {list(allowed)}, which does not cover these keys)')
    return lines


def _merged_from(checkpoint, source: str) -> str:
    """`` (here: DIR/X.pth, the file it was merged from)`` when the merged file's meta names
    its tuned checkpoint and that file is beside it; ``''`` otherwise."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    name = meta.get('source_checkpoint') if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        return ''
    tuned = osp.join(osp.dirname(str(source)), name)
    return f' (here: {tuned}, the file it was merged from)' if osp.isfile(tuned) else \
        f' (it was merged from {name})'


def _stock_message(purpose, source, checkpoint, current, n_peft, config) -> str:
    what = (f'this is a merged / stock checkpoint: it holds none of the {n_peft} PEFT tensors '
            f'of this config ({_describe(current)})')
    tuned = 'the tuned X.pth' + _merged_from(checkpoint, source)
    stock = stock_command(config, source)
    if purpose == 'test':
        return (f'mmssf: cannot test {source} with this tuned config: {what}. Tested this way, '
                f'they would start from their initial values and, on merged weights, apply the '
                f'method a second time: a silently wrong result. Test it with the stock config '
                f'({stock}, or tools/test.py with that config) or pass {tuned}.')
    if purpose == 'resume':
        return (f'mmssf: cannot resume from {source}: {what}. --resume continues a run and needs '
                f'its PEFT tensors: pass {tuned}. To start tuning from these weights, use '
                f'load_from instead (--cfg-options load_from={source}).')
    return (f'mmssf: cannot merge {source}: {what}, so there is nothing to merge. Evaluate it with '
            f'the stock config ({stock}) or merge {tuned}.')


def _hints(model, current, saved, foreign_peft, missing, own_peft, resume) -> List[str]:
    hints = []
    if foreign_peft:
        methods = sorted(set(foreign_peft.values()))
        if current:
            hints.append(f'  hint: the unexpected keys are {"/".join(methods)} tensors but this '
                         f'config tunes with {_describe(current)}')
        else:
            hints.append(f'  hint: this is a resumable {"/".join(methods)} checkpoint (X.pth) and '
                         f'the config is a stock one: evaluate X.pth with the tuned config, or '
                         f'X_merged.pth with the stock config')
    if resume and any(k in own_peft for k in missing):
        hints.append('  hint: --resume needs the PEFT tensors of the run it continues; to start '
                     'tuning from a stock or merged checkpoint use load_from instead')
    return hints


def _purpose(runner) -> str:
    """What the runner loads for: ``'resume'``, ``'load_from'`` (train: its train loop is built
    before ``load_or_resume``) or ``'test'`` (``Runner.test`` / ``Runner.val``)."""
    if getattr(runner, '_resume', False):
        return 'resume'
    return 'load_from' if isinstance(getattr(runner, '_train_loop', None), BaseLoop) else 'test'


def keep_initial_values(model, checkpoint, keys: Sequence[str]) -> None:
    """Put the model's own (initial) values of ``keys`` into ``checkpoint``'s state dict, so that
    the Runner's load right after copies them back unchanged and does not list them as missing
    (the one log line of :func:`check_checkpoint` has said it)."""
    if not keys:
        return
    state_dict = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
    own = _unwrap(model).state_dict()
    for key in keys:
        state_dict[key] = own[key].detach().clone()


def _checkpoint_name(runner) -> str:
    name = getattr(runner, '_load_from', None)
    if name is None and getattr(runner, '_resume', False):
        from mmengine.runner import find_latest_checkpoint
        name = find_latest_checkpoint(runner.work_dir)
    return str(name) if name else 'the checkpoint'


@HOOKS.register_module()
class CheckpointCheckHook(Hook):
    """Errors, instead of mmengine's warnings, for ``load_from`` / ``--resume`` / test
    checkpoints that do not fit the model; records the PEFT methods in every saved checkpoint.

    Args:
        allow_mismatch (list[str]): regexes of keys allowed to be missing, unexpected or
            mis-shaped (they keep the model's initial values).
    """
    priority = 'VERY_LOW'  # after hooks that rewrite the loaded checkpoint (EMA ...)

    def __init__(self, allow_mismatch: Sequence[str] = ()):
        self.allow_mismatch = _patterns(allow_mismatch, 'CheckpointCheckHook: allow_mismatch')

    def before_save_checkpoint(self, runner, checkpoint):
        record_peft_meta(runner.model, checkpoint)

    def after_load_checkpoint(self, runner, checkpoint):
        report = check_checkpoint(runner.model, checkpoint, source=_checkpoint_name(runner),
                                  purpose=_purpose(runner), allow_mismatch=self.allow_mismatch,
                                  config=getattr(runner.cfg, 'filename', None))
        keep_initial_values(runner.model, checkpoint, report['initial_peft'])


def _patterns(value, what: str) -> List[str]:
    """``value`` (a regex or a list of them) as a list, each checked to compile."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    for pattern in values:
        if not isinstance(pattern, str):
            raise TypeError(f'{what}: expected regexes (strings), got {pattern!r} '
                            f'({type(pattern).__name__}); on the command line write '
                            f'"checkpoint_allow_mismatch=[REGEX,REGEX]" without parentheses')
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f'{what}: {pattern!r} is not a valid regex ({err})') from None
    return values


def add_checkpoint_check(cfg) -> None:
    """Add :class:`CheckpointCheckHook` to ``cfg.custom_hooks`` unless the config has one, with
    the config's ``checkpoint_allow_mismatch`` regexes (settable by ``--cfg-options``) added to
    its ``allow_mismatch``."""
    def is_check(hook):
        if isinstance(hook, dict):
            hook = hook.get('type')
        return (hook is CheckpointCheckHook or isinstance(hook, CheckpointCheckHook)
                or hook in ('CheckpointCheckHook', 'mmssf.CheckpointCheckHook'))

    extra = _patterns(cfg.get('checkpoint_allow_mismatch'), 'checkpoint_allow_mismatch')
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(is_check(h) for h in hooks):
        hooks.append(dict(type='mmssf.CheckpointCheckHook'))
    for i, hook in enumerate(hooks):
        if extra and is_check(hook) and isinstance(hook, CheckpointCheckHook):
            hook.allow_mismatch = hook.allow_mismatch + extra
        elif extra and isinstance(hook, dict) and is_check(hook):
            hook = dict(hook)
            hook['allow_mismatch'] = _patterns(hook.get('allow_mismatch'), 'allow_mismatch') \
                + extra
            hooks[i] = hook
    cfg.custom_hooks = hooks
