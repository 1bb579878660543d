"""The merged stock checkpoint's format: ``{'state_dict': stock keys, 'meta': plain types}``.

Written beside every ``X.pth`` by :class:`~mmssf.engine.ReparamCheckpointHook` and offline by
``tools/model_converters/merge_peft.py`` (same function, same bytes). ``meta`` holds only plain
Python types so the *unmodified* upstream tools load it with ``weights_only=True``.
"""
from mmengine.model import is_model_wrapper

from .model_merge import merged_state_dict, peft_summary, tuned_submodules


def plain(value):
    """``value`` reduced to plain Python types (stock tools load with weights_only=True)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, 'item') and getattr(value, 'ndim', 1) == 0:
        return value.item()
    return str(value)


def build_merged_checkpoint(model, meta: dict = None, source: str = None) -> dict:
    """``{'state_dict': stock keys, 'meta': plain types}`` for a tuned model (untouched)."""
    if is_model_wrapper(model):
        model = model.module
    info = peft_summary(model)
    for prefix, _, method in tuned_submodules(model):
        extra = getattr(method, 'checkpoint_meta', None)
        if extra is not None:
            info.setdefault('allocation', {})[prefix] = extra()
    merged_meta = plain(dict(meta or {}))
    merged_meta.update(plain(dict(mmssf=info, source_checkpoint=source)))
    return {'meta': merged_meta, 'state_dict': merged_state_dict(model)}


#: the keys of a resumable checkpoint's meta that its ``_merged`` file keeps
MERGED_META_KEYS = ('epoch', 'iter', 'dataset_meta', 'seed', 'experiment_name', 'mmengine')


def merged_meta_from(checkpoint_meta: dict) -> dict:
    """The part of ``X.pth``'s meta that ``X_merged.pth`` keeps (hook and merge tool alike)."""
    return {k: v for k, v in (checkpoint_meta or {}).items() if k in MERGED_META_KEYS}


def record_peft_meta(model, checkpoint: dict) -> None:
    """Record the PEFT method(s) of ``model`` in ``checkpoint['meta']['mmssf']`` (plain types), so
    that loading it into a config tuned otherwise fails naming both methods."""
    if is_model_wrapper(model):
        model = model.module
    checkpoint.setdefault('meta', {})['mmssf'] = plain(peft_summary(model))
