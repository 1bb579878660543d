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

from mmengine.logging import print_log
from mmengine.registry import MODELS as ROOT_MODELS

from ..peft import apply_peft, load_peft
from ..peft.targets import find_table
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
    try:
        find_table(backbone)
    except TypeError as err:
        raise TypeError(f'mmssf.PeftBackbone cannot tune {stock_type!r}: {err}') from None
    if hasattr(backbone, 'init_weights'):
        backbone.init_weights()
        backbone._is_init = True  # the Runner must not re-initialise it (mmdet Swin overrides)
    method = apply_peft(backbone, peft)
    if peft_checkpoint:
        load_peft(peft_checkpoint, backbone)
    print_log(f'mmssf: {type(method).__name__} on {type(backbone).__name__}: '
              f'{method.num_trainable(backbone):,} trainable backbone parameters', logger='current',
              level=logging.INFO)
    return backbone

