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
    backbone = ROOT_MODELS.build(dict(type=stock_type, **stock_kwargs))
    tuned = unwrap(backbone)  # (mmpretrain.TIMMBackbone: its timm model)
    try:
        find_table(tuned)
    except TypeError as err:
        raise TypeError(f'mmssf.PeftBackbone cannot tune {stock_type!r}: {err}') from None
    if hasattr(backbone, 'init_weights'):
        backbone.init_weights()
        _reload_after_parent_init(backbone)
    method = apply_peft(tuned, peft)
    if peft_checkpoint:
        load_peft(tuned, peft_checkpoint)
    print_log(f'mmssf: {type(method).__name__} on {type(tuned).__name__}: '
              f'{method.num_trainable(tuned):,} trainable backbone parameters', logger='current',
              level=logging.INFO)
    return backbone



def _reload_after_parent_init(backbone):
    """Let the Runner's ``model.init_weights()`` run the stock backbone init once more.

    A parent's ``init_cfg`` (mmpretrain's classifiers: TruncNormal over every Linear, Constant
    over every LayerNorm) is applied to the whole model, backbone included, *before* the children
    initialise; in the stock flow the backbone's own ``init_weights`` then loads the pretrained
    weights again. Marking the backbone initialised would skip that and train from the parent's
    random values. Re-running the stock init restores exactly the stock result (the pretrained
    weights) and never touches PEFT tensors, which are no stock module's weight / bias.
    """
    stock_init = type(backbone).init_weights

    def init_weights(self):
        self._is_init = False
        method = get_peft(unwrap(self))
        quiet = _OnlyPeftKeysMissing(method.peft_state_dict(unwrap(self)) if method else {})
        logger = MMLogger.get_current_instance()
        logger.addFilter(quiet)
        try:
            stock_init(self)
        finally:
            logger.removeFilter(quiet)
        self._is_init = True
        del self.init_weights  # once: later calls see the plain (initialised) backbone

    backbone._is_init = False
    backbone.init_weights = types.MethodType(init_weights, backbone)


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
