from .peft_backbone import PeftBackbone

__all__ = ['PeftBackbone']
