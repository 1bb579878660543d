from .peft_backbone import PeftBackbone
from .timm_vit_pool import TimmViTPool

__all__ = ['PeftBackbone', 'TimmViTPool']
