"""The stock sub-layers of one block, written out for the references of the official formulas of
the block adapters (AdaptFormer, Adapter+): ``y`` the stream after the attention residual, ``b``
the MLP branch's term (so the stock block returns ``y + b``). Run on a stock copy of the block (no
hooks), in eval mode (drop-path and dropout are identities)."""
import copy

import torch

from conftest import build_backbone

#: fixture name -> (block name, token width, extra tokens, grid) of the blocks compared
BLOCKS = {
    'timm_vit': [('blocks.1', 32, 1, None)],
    'mmpretrain_vit': [('layers.0', 32, 1, None)],
    'mmpretrain_swin': [('stages.0.blocks.1', 32, 0, (18, 22)),
                        ('stages.1.blocks.0', 64, 0, (9, 11))],
}


def attention_then_mlp(kind, block, x, hw):
    if kind == 'timm_vit':
        y = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
        return y, block.drop_path2(block.ls2(block.mlp(block.norm2(y))))
    if kind == 'mmpretrain_vit':
        y = x + block.attn(block.ln1(x))
        return y, block.ffn.layers(block.ln2(y))
    y = x + block.attn(block.norm1(x), hw)  # mmcv SwinBlock
    return y, block.ffn.layers(block.norm2(y))


def call(block, x, hw):
    return block(x) if hw is None else block(x, hw)


def tuned_and_stock(kind, cfg, seed=3):
    """A backbone tuned with ``cfg`` (adapter tensors randomized), a stock copy, and the method."""
    from conftest import randomize_peft
    from mmssf.peft import apply_peft
    model, _ = build_backbone(kind)
    stock = copy.deepcopy(model)
    method = apply_peft(model, cfg)
    randomize_peft(model, seed=seed, std=0.3)
    return model, stock, method


def tokens(width, extra, hw, seed=0):
    count = extra + (hw[0] * hw[1] if hw else 16)
    return torch.randn(2, count, width, generator=torch.Generator().manual_seed(seed))


def relative_error(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()
