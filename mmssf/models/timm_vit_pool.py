"""``mmssf.TimmViTPool``: the pooling of timm's ViT head, as an mmpretrain neck.

``mmpretrain.TIMMBackbone`` removes timm's classifier *and* its pooling
(``reset_classifier(0, '')``), so a timm ``VisionTransformer`` inside it returns every token,
``(B, N, C)``, after the final ``norm`` (and ``fc_norm``, an Identity on class-token models). This
neck pools them as timm's ``forward_head`` does, so an mmpretrain head (``LinearClsHead``) sees
timm's pre-logits features::

    model = dict(type='ImageClassifier',
                 backbone=dict(type='mmssf.PeftBackbone', stock_type='TIMMBackbone',
                               model_name='vit_base_patch16_224.augreg_in21k', ...),
                 neck=dict(type='mmssf.TimmViTPool'),
                 head=dict(type='LinearClsHead', in_channels=768, num_classes=100))

Options:
    pool: ``'token'`` (default: the class token, token 0 — ``vit_base_patch16_224``, DINOv2) or
        ``'avg'`` (the mean of the tokens after the ``num_prefix_tokens`` class / register tokens).
        For ``'avg'`` models timm applies ``fc_norm`` after pooling, while the tokens here already
        passed it one by one; the result then differs from timm's head (use ``'token'`` models,
        or a model without ``fc_norm``).
    num_prefix_tokens: the class + register tokens in front of the patch tokens (``'avg'`` only;
        timm's ``model.num_prefix_tokens``: 1, DINOv2 with registers 5).
"""
from mmengine.model import BaseModule

from ..registry import MODELS

POOLS = ('token', 'avg')


@MODELS.register_module()
class TimmViTPool(BaseModule):

    def __init__(self, pool='token', num_prefix_tokens=1, init_cfg=None):
        super().__init__(init_cfg)
        if pool not in POOLS:
            raise ValueError(f'TimmViTPool: pool={pool!r} is no pooling; choose one of {POOLS}')
        self.pool = pool
        self.num_prefix_tokens = int(num_prefix_tokens)

    def forward(self, inputs):
        """``inputs``: the backbone's tuple of ``(B, N, C)`` tokens -> tuple of ``(B, C)``."""
        outs = []
        for tokens in inputs:
            if tokens.dim() != 3:
                raise ValueError(f'TimmViTPool expects (B, N, C) tokens, got shape '
                                 f'{tuple(tokens.shape)} (a timm ViT inside TIMMBackbone, '
                                 f'features_only=False)')
            outs.append(tokens[:, 0] if self.pool == 'token'
                        else tokens[:, self.num_prefix_tokens:].mean(1))
        return tuple(outs)
