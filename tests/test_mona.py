"""Mona against a reference written here from the paper (Yin et al., CVPR 2025, Fig. 2 / Sec. 3)
and the official code's placement: ``x = x + attn(norm1(x)); x = mona1(x); x = x +
mlp(norm2(x)); x = mona2(x)``, on every backbone implementation (the reference block forwards are
set on a stock copy of the backbone, in this test only). Also: output shapes are stock, every
adapter gets gradients, gradient checkpointing of Swin blocks changes nothing, and the merge is
refused (``method_matrix.REFUSE_CASES``)."""
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import build_backbone, flatten_outputs, randomize_peft
from mmssf.peft import apply_peft, get_peft


class ReferenceMona(nn.Module):
    """One Mona adapter as the paper draws it (Fig. 2, right)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(torch.empty(dim))
        self.gammax = nn.Parameter(torch.empty(dim))
        self.down = nn.Linear(dim, hidden)
        self.convs = nn.ModuleList(nn.Conv2d(hidden, hidden, k, padding=k // 2, groups=hidden)
                                   for k in (3, 5, 7))
        self.proj = nn.Conv2d(hidden, hidden, 1)
        self.up = nn.Linear(hidden, dim)

    def load_from(self, block, site):
        own = {n[len(f'mona_{site}_'):]: p for n, p in block.named_parameters(recurse=False)
               if n.startswith(f'mona_{site}_')}
        with torch.no_grad():
            for mine, theirs in [(self.norm.weight, 'norm_weight'), (self.norm.bias, 'norm_bias'),
                                 (self.gamma, 'gamma'), (self.gammax, 'gammax'),
                                 (self.down.weight, 'down_weight'), (self.down.bias, 'down_bias'),
                                 (self.proj.weight, 'proj_weight'), (self.proj.bias, 'proj_bias'),
                                 (self.up.weight, 'up_weight'), (self.up.bias, 'up_bias')] + \
                    [(c.weight, f'conv{k}_weight') for c, k in zip(self.convs, (3, 5, 7))] + \
                    [(c.bias, f'conv{k}_bias') for c, k in zip(self.convs, (3, 5, 7))]:
                mine.copy_(own.pop(theirs))
        assert not own, own

    def forward(self, x, hw, extra):
        h = self.down(self.norm(x) * self.gamma + x * self.gammax)
        batch, _, width = h.shape
        grid = h[:, extra:].reshape(batch, hw[0], hw[1], width).permute(0, 3, 1, 2)
        grid = sum(conv(grid) for conv in self.convs) / 3.0 + grid
        grid = grid + self.proj(grid)
        h = torch.cat([h[:, :extra], grid.permute(0, 2, 3, 1).reshape(batch, -1, width)], dim=1)
        return x + self.up(F.gelu(h))  # (dropout: eval mode)


def swin_block(block, x, hw_shape):
    identity = x
    x = block.attn(block.norm1(x), hw_shape) + identity
    x = block.ref1(x, hw_shape, 0)
    x = block.ffn(block.norm2(x), identity=x)
    return block.ref2(x, hw_shape, 0)


def mmpretrain_vit_layer(layer, x):
    x = x + layer.attn(layer.ln1(x))
    x = layer.ref1(x, layer.grid, layer.extra)
    x = layer.ffn(layer.ln2(x), identity=x)
    return layer.ref2(x, layer.grid, layer.extra)


def mmseg_vit_layer(layer, x):
    x = layer.attn(layer.ln1(x), identity=x)
    x = layer.ref1(x, layer.grid, layer.extra)
    x = layer.ffn(layer.ln2(x), identity=x)
    return layer.ref2(x, layer.grid, layer.extra)


def timm_vit_block(block, x):
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
    x = block.ref1(x, block.grid, block.extra)
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return block.ref2(x, block.grid, block.extra)


def reference_model(name, tuned, size):
    """A stock copy of ``tuned``'s backbone with the reference block forwards and its Mona
    parameters."""
    stock, _ = build_backbone(name)  # same seed: the same stock weights
    tuned_blocks = {u.name: u.module for u in get_peft(tuned).units}
    modules = dict(stock.named_modules())
    for block_name, tuned_block in tuned_blocks.items():
        block = modules[block_name]
        dim = tuned_block.mona_attn_up_weight.shape[0]
        hidden = tuned_block.mona_attn_up_weight.shape[1]
        block.ref1, block.ref2 = ReferenceMona(dim, hidden), ReferenceMona(dim, hidden)
        block.ref1.load_from(tuned_block, 'attn')
        block.ref2.load_from(tuned_block, 'ffn')
        if 'vit' in name:
            block.grid = (size[0] // 16, size[1] // 16)
            block.extra = 1
            forward = {'mmseg_vit': mmseg_vit_layer, 'timm_vit': timm_vit_block}.get(
                name, mmpretrain_vit_layer)
        else:
            forward = swin_block
        block.forward = types.MethodType(forward, block)
    stock.eval()  # (mmdet Swin's train() returns None)
    return stock


def test_outputs_equal_the_reference_placement(backbone_name):
    model, size = build_backbone(backbone_name)
    apply_peft(model, dict(type='Mona', r=8))
    randomize_peft(model)
    reference = reference_model(backbone_name, model, size)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours, ref = flatten_outputs(model(x)), flatten_outputs(reference(x))
    assert len(ours) == len(ref) > 0
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_output_shapes_are_stock_and_every_adapter_gets_gradients(backbone_name):
    model, size = build_backbone(backbone_name)
    stock, _ = build_backbone(backbone_name)
    method = apply_peft(model, dict(type='Mona'))
    assert method.units
    x = torch.randn(2, 3, *size)
    outs = flatten_outputs(model(x))
    with torch.no_grad():
        assert [o.shape for o in outs] == [o.shape for o in flatten_outputs(stock(x))]
    sum(o.square().mean() for o in outs).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all('.mona_' in n for n in trainable)
    dead = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    assert all(get_peft(model).merge_blockers())


def test_default_targets_are_every_block(backbone_name):
    model, _ = build_backbone(backbone_name)
    method = apply_peft(model, dict(type='Mona'))
    names = [u.name for u in method.units]
    expected = 3 if 'swin' in backbone_name else 2  # conftest: Swin depths (2, 1), ViT 2 layers
    assert len(names) == expected
    prefix = {'timm_vit': 'blocks.'}.get(backbone_name, 'layers.')
    assert all(n.startswith(prefix) if 'vit' in backbone_name else '.blocks.' in n for n in names)


def test_swin_gradient_checkpointing_changes_nothing():
    """With ``with_cp`` the block body is recomputed in backward (the hooks run twice)."""
    grads = []
    for with_cp in (False, True):
        model, size = build_backbone('mmpretrain_swin', with_cp=with_cp)
        apply_peft(model, dict(type='Mona', r=8))
        randomize_peft(model)
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
        sum(o.square().mean() for o in flatten_outputs(model(x))).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], msg=name)


def test_targets_must_be_blocks():
    model, _ = build_backbone('mmpretrain_swin')
    with pytest.raises(ValueError, match=r'Mona attaches to whole blocks.*not blocks'):
        apply_peft(model, dict(type='Mona', targets=['fc1']))
    fine, _ = build_backbone('mmpretrain_swin')
    assert len(apply_peft(fine, dict(type='Mona', targets=['stages.0.blocks.1'])).units) == 1


def test_swin_b_trains_under_five_percent():
    """The paper's headline: under 5 % of the backbone's parameters (here with the formula of
    ``test_param_counts.mona_formula``, head excluded)."""
    from mmpretrain.models.backbones import SwinTransformer
    from test_param_counts import HEAD, mona_formula
    backbone = SwinTransformer(arch='base', img_size=224)
    total = sum(p.numel() for p in backbone.parameters())
    method = apply_peft(backbone, dict(type='Mona'))
    assert method.num_trainable(backbone) == mona_formula('swin_b') - HEAD['swin_b']
    assert method.num_trainable(backbone) / total < 0.05


def test_trains_under_autocast():
    model, size = build_backbone('mmdet_swin')
    apply_peft(model, dict(type='Mona', r=8))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = flatten_outputs(model(torch.randn(2, 3, *size)))
        loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
