"""Fidelity on timm's ViT, the model of the official code: for VPT (KMnP/vpt), RLRR (zstarN70/RLRR)
and SNELL (ssfgunner/SNELL), the same timm weights and the same PEFT tensors give the output of
the official formulas, written here as explicit forwards over the stock timm modules (≤ 1e-5
relative, float64)."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_peft
from mmssf.peft import apply_peft
from test_snell import reference_blocks
from test_timm import build


def _double(name, seed=0):
    model, x = build(name, seed)
    return model.double(), x.double()


def _copy_stock_tensors(tuned, reference):
    """The tuned model's stock tensors (the trained head / class token included) into the
    reference: the stored parameters, not the tuned effective weights."""
    own = reference.state_dict()
    reference.load_state_dict({k: v for k, v in tuned.state_dict().items() if k in own})


def _assert_close(ours, ref, untuned):
    """``ours`` equals the reference, which differs from the un-tuned model's output."""
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * scale)
    assert (ref - untuned).abs().max().item() > 1e-3 * scale


# -- VPT: KMnP/vpt PromptedTransformer -----------------------------------------------------------
def official_vpt(stock, img, prompts, deep):
    """``[prefix, prompts, patches]`` after the embedding (the prompts get no position
    embedding); deep: before every layer after the first, the prompt slots are replaced by that
    layer's own set; the final norm over all tokens and the head on the class token."""
    x = stock.norm_pre(stock._pos_embed(stock.patch_embed(img)))
    pre, num, batch = stock.num_prefix_tokens, prompts[0].shape[0], img.shape[0]

    def expand(p):
        return p.unsqueeze(0).expand(batch, -1, -1)

    x = torch.cat([x[:, :pre], expand(prompts[0]), x[:, pre:]], dim=1)
    for i, blk in enumerate(stock.blocks):
        if deep and i > 0:
            x = torch.cat([x[:, :pre], expand(prompts[i]), x[:, pre + num:]], dim=1)
        x = blk(x)
    x = stock.norm(x)
    return stock.head(stock.fc_norm(x[:, 0]))


@pytest.mark.parametrize('name', ['vit', 'dinov2'])
@pytest.mark.parametrize('method', ['VPTShallow', 'VPTDeep'])
def test_vpt_equals_the_official_token_flow(name, method):
    model, x = _double(name)
    stock, _ = _double(name)
    apply_peft(model, dict(type=method, num_prompts=3))
    randomize_peft(model, std=0.5)
    with torch.no_grad():  # (DINOv2's LayerScale starts at 1e-5: blocks barely act)
        for n, p in model.named_parameters():
            if n.endswith('.gamma'):
                p.fill_(1.0)
    _copy_stock_tensors(model, stock)
    params = dict(model.named_parameters())
    depth = len(stock.blocks)
    prompts = [params[f'blocks.{i}.vpt_prompt'].detach()
               for i in (range(depth) if method == 'VPTDeep' else [0])]
    with torch.no_grad():
        _assert_close(model(x), official_vpt(stock, x, prompts, method == 'VPTDeep'), stock(x))


# -- RLRR: zstarN70/RLRR models/networks.py ------------------------------------------------------
def _ssf(x, scale, shift):
    return x * scale + shift


def _rlrr_linear(x, weight, bias, scale_line, scale_col, shift):
    """The official RLRRLinear: ``F.linear(x, W * scale_col * scale_line + W, b + shift)``."""
    return F.linear(x, weight * scale_col.view(1, -1) * scale_line.view(-1, 1) + weight,
                    bias + shift)


def official_rlrr(stock, img, p):
    """RLRREmbeddings / RLRRBlock / RLRREncoder over the timm weights: SSF after the patch
    embedding (before the class token and the position embedding), after both block norms and
    after the final norm; RLRRLinear on separate q, k, v (their rows of timm's fused qkv, each
    with its own column scale), the attention output and both MLP Linears."""
    x = stock.patch_embed.proj(img).flatten(2).transpose(1, 2)
    x = _ssf(x, *p['patch_embed.proj'])
    x = torch.cat([stock.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + stock.pos_embed
    for i, blk in enumerate(stock.blocks):
        name = f'blocks.{i}.'
        h = _ssf(blk.norm1(x), *p[name + 'norm1'])
        qkv, (line, cols, shift) = blk.attn.qkv, p[name + 'attn.qkv']
        dim = qkv.in_features
        q, k, v = (_rlrr_linear(h, qkv.weight[j * dim:(j + 1) * dim],
                                qkv.bias[j * dim:(j + 1) * dim], line[j * dim:(j + 1) * dim],
                                cols[j], shift[j * dim:(j + 1) * dim]) for j in range(3))
        heads = blk.attn.num_heads

        def split(t):
            return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim // heads)
        ctx = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(h.shape)
        proj = blk.attn.proj
        x = x + _rlrr_linear(ctx, proj.weight, proj.bias, *p[name + 'attn.proj'])
        h = _ssf(blk.norm2(x), *p[name + 'norm2'])
        fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
        h = F.gelu(_rlrr_linear(h, fc1.weight, fc1.bias, *p[name + 'mlp.fc1']))
        x = x + _rlrr_linear(h, fc2.weight, fc2.bias, *p[name + 'mlp.fc2'])
    x = _ssf(stock.norm(x), *p['norm'])
    return stock.head(x[:, 0])


def test_rlrr_equals_the_official_model():
    model, x = _double('vit')
    stock, _ = _double('vit')
    method = apply_peft(model, dict(type='RLRR', init='official'))
    randomize_peft(model, std=0.2)
    _copy_stock_tensors(model, stock)
    p = {}
    for unit in method.units:
        if hasattr(unit, 'left'):
            p[unit.name] = tuple(t.detach() for t in (unit.left, unit.right, unit.shift))
        else:
            p[unit.name] = (unit.scale.detach(), unit.shift.detach())
    assert p['blocks.0.attn.qkv'][1].shape == (3, 32)  # three column scales on the fused qkv
    with torch.no_grad():
        _assert_close(model(x), official_rlrr(stock, x, p), stock(x))


# -- SNELL: ssfgunner/SNELL (timm ViT, kernelized sparse ΔW added to each block Linear) --------
def test_snell_equals_the_official_model():
    """``F.linear(x, W + ΔWˢ, b)`` on qkv (separate q / k / v blocks), proj, fc1 and fc2 of every
    block, ΔWˢ from the reference of tests/test_snell.py; the trained class token and head."""
    model, x = _double('vit')
    stock, _ = _double('vit')
    method = apply_peft(model, dict(type='SNELL', r=4))
    randomize_peft(model, std=0.2)
    _copy_stock_tensors(model, stock)
    modules = dict(stock.named_modules())
    assert sorted({u.role for u in method.units}) == ['fc1', 'fc2', 'proj', 'qkv']
    with torch.no_grad():
        untuned = stock(x)
        for unit in method.units:
            modules[unit.name].weight += reference_blocks(unit).to(torch.float64)
        _assert_close(model(x), stock(x), untuned)
