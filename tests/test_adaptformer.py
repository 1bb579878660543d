"""AdaptFormer equals the official block (ShoufaChen/AdaptFormer ``models/custom_modules.py``
``Block.forward`` with ``models/adapter.py``'s ``Adapter``), written out below, on the same
weights; its init and options are the official ones."""
import pytest
import torch
import torch.nn.functional as F

from block_reference import (BLOCKS, attention_then_mlp, call, relative_error, tokens,
                             tuned_and_stock)
from conftest import build_backbone
from mmssf.peft import MergeError, OptionError, apply_peft, build_peft


def official_adapter(x, p, scale, layernorm='none'):
    """``Adapter.forward(x, add_residual=False)`` of the official code (eval: no dropout)."""
    if layernorm == 'in':
        x = F.layer_norm(x, x.shape[-1:], p['norm_weight'], p['norm_bias'], eps=1e-5)
    down = torch.relu(x @ p['down_weight'].T + p['down_bias'])
    up = (down @ p['up_weight'].T + p['up_bias']) * scale
    if layernorm == 'out':
        up = F.layer_norm(up, up.shape[-1:], p['norm_weight'], p['norm_bias'], eps=1e-5)
    return up


def official_block(kind, block, x, hw, p, scale, option, layernorm):
    """``x = x + attn; adapt_x = adaptmlp(x); x = residual + (mlp + adapt_x)`` (parallel) or
    ``residual + adaptmlp(mlp)`` (sequential: the adapter's residual is the MLP output)."""
    y, branch = attention_then_mlp(kind, block, x, hw)
    if option == 'parallel':
        return y + (branch + official_adapter(y, p, scale, layernorm))
    return y + (branch + official_adapter(branch, p, scale, layernorm))


CASES = [dict(), dict(position='sequential'), dict(norm='in', scale=0.5),
         dict(position='sequential', norm='out', learnable_scale=True)]


@pytest.mark.parametrize('kind', sorted(BLOCKS))
def test_equals_the_official_block(kind):
    for opts in CASES:
        model, stock, method = tuned_and_stock(kind, dict(type='AdaptFormer', r=4, **opts))
        modules, stock_modules = dict(model.named_modules()), dict(stock.named_modules())
        for name, width, extra, hw in BLOCKS[kind]:
            block = modules[name]
            p = {k[len('adaptformer_'):]: v for k, v in block.named_parameters(recurse=False)}
            scale = p['scale'] if opts.get('learnable_scale') else opts.get('scale', 0.1)
            x = tokens(width, extra, hw)
            with torch.no_grad():
                out = call(block, x, hw)
                ref = official_block(kind, stock_modules[name], x, hw, p, scale,
                                     opts.get('position', 'parallel'), opts.get('norm', 'none'))
                plain = call(stock_modules[name], x, hw)
            assert relative_error(out, ref) <= 1e-5, (kind, opts, name)
            assert relative_error(out, plain) > 1e-3  # the adapter acts


def test_official_init_starts_at_the_pretrained_function():
    model, size = build_backbone('mmpretrain_vit')
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        before = model(x)[-1]
        method = apply_peft(model, dict(type='AdaptFormer'))
        after = model(x)[-1]
    assert torch.equal(before, after)
    unit = method.units[0]
    down = unit.param('down_weight')
    assert down.shape == (64, 32) and unit.opts.scale == 0.1 and unit.opts.dropout == 0.1
    bound = 1 / 32 ** 0.5  # kaiming-uniform with a = sqrt(5): U(±1/sqrt(fan_in))
    assert down.abs().max() <= bound and down.std() > bound / 3
    for name in ('down_bias', 'up_weight', 'up_bias'):
        assert not unit.param(name).any(), name


def test_dropout_acts_in_training_only():
    model, _ = build_backbone('timm_vit')
    apply_peft(model, dict(type='AdaptFormer', r=16, dropout=0.5))
    torch.nn.init.normal_(model.blocks[0].adaptformer_up_weight)
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        model.train()
        one, two = model.blocks[0](x), model.blocks[0](x)
        model.eval()
        three, four = model.blocks[0](x), model.blocks[0](x)
    assert not torch.allclose(one, two) and torch.equal(three, four)


def test_options_and_merge_refusal():
    with pytest.raises(OptionError, match=r"position='paralel' is not one of 'parallel', 'sequential'"):
        build_peft(dict(type='AdaptFormer', position='paralel'))
    with pytest.raises(OptionError, match=r"unknown option 'ffn_num'.*Valid options: .*position"):
        build_peft(dict(type='AdaptFormer', ffn_num=64))
    model, _ = build_backbone('mmseg_swin')
    method = apply_peft(model, dict(type='AdaptFormer', r=2))
    with pytest.raises(MergeError, match='AdaptFormer cannot be merged.*non-linear'):
        method.merge(model)
    with pytest.raises(OptionError, match=r'scale=0.5 has no effect with learnable_scale=True'):
        apply_peft(build_backbone('timm_vit')[0],
                   dict(type='AdaptFormer', learnable_scale=True, scale=0.5))
    with pytest.raises(ValueError, match='attaches to whole blocks'):
        apply_peft(build_backbone('mmseg_swin')[0], dict(type='AdaptFormer', targets=['fc2']))
