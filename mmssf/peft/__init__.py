"""Tuning methods; every one obeys :class:`mmssf.peft.base.PeftMethod`'s contract."""
from .adapter import Adapter
from .adapter_plus import AdapterPlus
from .adaptformer import AdaptFormer
from .base import MergeError, PeftMethod, PeftUnit, get_peft
from .baselines import BitFit, FullFineTune, LinearProbe
from .builder import apply_peft, build_peft
from .card import MethodCard
from .delta_weight import DeltaWeightUnit
from .dora import DoRA
from .fact import FacTTK, FacTTT
from .glora import GLoRA
from .io import load_base_weights, load_peft, save_peft
from .lora import LoRA
from .mona import Mona
from .options import Option, OptionError
from .param_count import count_trainable, print_trainable_parameters
from .rlrr import RLRR
from .snell import SNELL
from .spt import SPTAdapter, SPTLoRA
from .ssf import SSF
from .targets import find_table, supported_backbones
from .vpt import VPTDeep, VPTShallow

__all__ = [
    'AdaptFormer', 'Adapter', 'AdapterPlus',
    'BitFit', 'DeltaWeightUnit', 'DoRA', 'FullFineTune', 'LinearProbe', 'LoRA',
    'MergeError', 'MethodCard', 'Mona',
    'FacTTK', 'FacTTT', 'GLoRA',
    'Option', 'OptionError', 'PeftMethod', 'PeftUnit', 'RLRR', 'SNELL', 'SPTAdapter', 'SPTLoRA',
    'SSF', 'VPTDeep', 'VPTShallow', 'apply_peft', 'build_peft', 'count_trainable', 'find_table',
    'get_peft', 'load_base_weights', 'load_peft', 'print_trainable_parameters', 'save_peft',
    'supported_backbones'
]
