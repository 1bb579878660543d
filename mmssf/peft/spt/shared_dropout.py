"""One dropout draw shared by several units that read the same input.

The official SPT-LoRA (ziplab/SPT ``AttentionSPTParallel``) drops the attention input once and
feeds the same ``x_drop`` to its q, k and v LoRAs; here those are three units (three row blocks of
a fused qkv, or three Linears), each with its own forward hook. A :class:`SharedDropout` of ``n``
members draws the mask for the first member that sees an input and hands the same dropped tensor
to the others; once all ``n`` have taken it, it lets go of both tensors (nothing outlives the
forward). A member called with another input draws afresh, so a mismatch costs the sharing, never
correctness. Under activation checkpointing the recomputation restores the RNG state and draws
the same single mask again.
"""
import torch
import torch.nn.functional as F


class SharedDropout:
    """``F.dropout`` whose draw is shared by ``members`` consecutive calls on the same tensor."""

    def __init__(self, members: int):
        self.members = members
        self._input = None
        self._dropped = None
        self._taken = 0

    def __call__(self, x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
        if not p or not training:
            return x
        if self._input is not x:
            self._input, self._dropped, self._taken = x, F.dropout(x, p, True), 0
        dropped = self._dropped
        self._taken += 1
        if self._taken == self.members:
            self._input = self._dropped = None
        return dropped
