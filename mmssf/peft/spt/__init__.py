"""SPT: sensitivity-aware parameter allocation (sensitivity -> allocation file -> SPT-LoRA /
SPT-Adapter)."""
from .allocation import Allocation, allocate, parse_budget
from .method import SPTAdapter, SPTLoRA
from .sensitivity import compute_sensitivity, scored_parameters

__all__ = ['Allocation', 'SPTAdapter', 'SPTLoRA', 'allocate', 'compute_sensitivity',
           'parse_budget', 'scored_parameters']
