"""``mmssf.PeftBackbone``: a stock backbone, pretrained, tuned and frozen at construction.

Used from any mmpretrain / mmdet / mmseg config by changing the backbone's type and naming the
stock one, keeping every other stock key::

    model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='SwinTransformer',
                               peft=dict(type='SSF')))

It returns the stock backbone instance itself (no container), so parameter names stay the stock
ones: stock checkpoints load without remapping and the PEFT tensors live under the modules they
tune (``...attn.w_msa.qkv.ssf_scale``).
"""
import logging
import types

import torch
from mmengine.logging import MMLogger, print_log
from mmengine.registry import MODELS as ROOT_MODELS

from ..peft import apply_peft, get_peft, load_peft
from ..peft.targets import find_table, unwrap
from ..registry import MODELS


@MODELS.register_module()
def PeftBackbone(stock_type, peft, peft_checkpoint=None, **stock_kwargs):
    """Build ``stock_type(**stock_kwargs)``, load its pretrained weights, apply ``peft``.

    Args:
        stock_type (str): the stock backbone type, resolved in the config's default scope
            (``'SwinTransformer'``) or scope-prefixed (``'mmdet.SwinTransformer'``).
        peft (dict): the method config, e.g. ``dict(type='SSF')`` or
            ``dict(type='LoRA', r=8, targets=['qkv'])``. See :mod:`mmssf.peft`.
        peft_checkpoint (str, optional): a PEFT-only file (``save_peft``) loaded after tuning.
        **stock_kwargs: the stock backbone's own arguments, ``init_cfg`` included.

    The stock ``init_cfg`` (``Pretrained``) is applied here, at construction, because the
    Runner's test path never calls ``init_weights``; freezing happens here too, before the Runner
    wraps the model in DDP, so ``find_unused_parameters`` is never needed.
    """
    def build_stock():
        return ROOT_MODELS.build(dict(type=stock_type, **stock_kwargs))

    backbone = build_stock()
    # a wrapper that loaded its weights in __init__ marks itself initialised (TIMMBackbone with
    # ``pretrained`` / ``checkpoint_path``); its own init_weights would re-randomise them
    loaded_in_init = bool(getattr(backbone, '_is_init', False))
    tuned = unwrap(backbone)  # (mmpretrain.TIMMBackbone: its timm model)
    try:
        find_table(tuned)
    except TypeError as err:
        raise TypeError(f'mmssf.PeftBackbone cannot tune {stock_type!r}: {err}') from None
    if hasattr(backbone, 'init_weights') and not loaded_in_init:
        backbone.init_weights()
    method = apply_peft(tuned, peft)
    if peft_checkpoint:
        load_peft(tuned, peft_checkpoint)
    if hasattr(backbone, 'init_weights'):
        _reload_after_parent_init(backbone, build_stock if loaded_in_init else None,
                                  peft_checkpoint)
    print_log(f'mmssf: {type(method).__name__} on {type(tuned).__name__}: '
              f'{method.num_trainable(tuned):,} trainable backbone parameters', logger='current',
              level=logging.INFO)
    return backbone



def _reload_after_parent_init(backbone, rebuild=None, peft_checkpoint=None):
    """Let the Runner's ``model.init_weights()`` run the stock backbone init once more.

    A parent's ``init_cfg`` (mmpretrain's classifiers: TruncNormal over every Linear, Constant
    over every LayerNorm) is applied to the whole model, backbone included, *before* the children
    initialise; in the stock flow the backbone's own ``init_weights`` then loads the pretrained
    weights again. Marking the backbone initialised would skip that and train from the parent's
    random values. Re-running the stock init restores exactly the stock result (the pretrained
    weights).

    ``rebuild``: for a wrapper that loaded its weights in ``__init__`` (mmpretrain / mmseg
    ``TIMMBackbone`` with ``pretrained`` or ``checkpoint_path``) the stock init is no loader:
    re-running it would call timm's random ``init_weights`` over the loaded weights. Its stock
    result is what a fresh build holds, so the stock tensors are copied from one (built with the
    random state left as it was).

    PEFT tensors are no stock module's weight / bias: neither init touches them. The stock
    tensors a method trains (BitFit's biases) get their pretrained values back like every other
    stock tensor; with a ``peft_checkpoint`` that file is loaded again afterwards, as the stock
    init loads its pretrained file again (never a snapshot taken at the call: by then the
    parent's init has already overwritten those tensors).
    """
    stock_init = type(backbone).init_weights

    def init_weights(self):
        method = get_peft(unwrap(self))
        if rebuild is None:
            self._is_init = False
            quiet = _OnlyPeftKeysMissing(method.peft_state_dict(unwrap(self)) if method else {})
            logger = MMLogger.get_current_instance()
            logger.addFilter(quiet)
            try:
                stock_init(self)
            finally:
                logger.removeFilter(quiet)
        else:
            _copy_stock_tensors(self, rebuild)
        if peft_checkpoint:
            load_peft(unwrap(self), peft_checkpoint)
        self._is_init = True
        del self.init_weights  # once: later calls see the plain (initialised) backbone

    backbone._is_init = False
    backbone.init_weights = types.MethodType(init_weights, backbone)


def _copy_stock_tensors(backbone, rebuild):
    """Copy every tensor of a freshly built stock backbone into the tuned one (same keys)."""
    with torch.random.fork_rng(devices=[]):
        fresh = rebuild().state_dict()
    own = backbone.state_dict()
    unknown = sorted(set(fresh) - set(own))
    if unknown:
        raise KeyError(f'mmssf.PeftBackbone: the tuned {type(backbone).__name__} lacks stock '
                       f'keys of a fresh build: {unknown[:8]}')
    with torch.no_grad():
        for key, value in fresh.items():
            own[key].copy_(value)


class _OnlyPeftKeysMissing(logging.Filter):
    """Drops the pretrained loader's "missing keys" warning when only PEFT tensors are missing
    (they are never in a stock checkpoint); any other mismatch is still logged."""

    def __init__(self, peft_keys):
        super().__init__()
        self.peft_keys = set(peft_keys)

    def filter(self, record):
        msg = record.getMessage()
        if 'missing keys in source state_dict:' not in msg or 'unexpected key' in msg:
            return True
        listed = msg.split('missing keys in source state_dict:', 1)[1].split('\n')[0]
        missing = {k.strip() for k in listed.split(',') if k.strip()}
        return not missing <= self.peft_keys
