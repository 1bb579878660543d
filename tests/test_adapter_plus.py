"""Adapter+ equals the official block (visinf/adapter_plus ``adapter_plus/vit_adapter.py``:
``AdapterBlock.forward_post`` / ``forward_parallel`` / ``forward_intermediate`` with its
``Adapter``), written out below, on the same weights; its init and options are the official
ones."""
import pytest
import torch
import torch.nn.functional as F

from block_reference import (BLOCKS, attention_then_mlp, call, relative_error, tokens,
                             tuned_and_stock)
from conftest import build_backbone
from mmssf.peft import MergeError, OptionError, apply_peft, build_peft


def official_adapter(x, p, skip, norm_eps=None, act=True):
    """``Adapter.forward(x, skip)`` (eval: no dropout / drop-path): ``norm_a``, the bottleneck
    ``Linear, act, Linear``, times ``scaling``, plus ``skip``."""
    if norm_eps is not None:
        x = F.layer_norm(x, x.shape[-1:], p['norm_weight'], p['norm_bias'], eps=norm_eps)
    h = x @ p['down_weight'].T + p.get('down_bias', 0)
    h = F.gelu(h) if act else h
    h = h @ p['up_weight'].T + p.get('up_bias', 0)
    return h * p.get('scaling', 1.0) + skip


def official_block(kind, block, x, hw, p, config, norm_eps, act):
    y, branch = attention_then_mlp(kind, block, x, hw)
    if config == 'post':  # x = x + mlp; x = adapter(x, skip=x)
        z = y + branch
        return official_adapter(z, p, z, norm_eps, act)
    if config == 'parallel':  # adapter(y, skip=z)
        return official_adapter(y, p, y + branch, norm_eps, act)
    return y + official_adapter(branch, p, branch, norm_eps, act)  # intermediate


CASES = [dict(), dict(position='parallel', norm=True), dict(position='intermediate'),
         dict(scaling='learned', bias=False, act='none'), dict(scaling='none', init='lora')]


@pytest.mark.parametrize('kind', sorted(BLOCKS))
def test_equals_the_official_block(kind):
    for opts in CASES:
        model, stock, method = tuned_and_stock(kind, dict(type='AdapterPlus', r=4, **opts))
        modules, stock_modules = dict(model.named_modules()), dict(stock.named_modules())
        for name, width, extra, hw in BLOCKS[kind]:
            block = modules[name]
            p = {k[len('adapterplus_'):]: v for k, v in block.named_parameters(recurse=False)}
            eps = method.units[0].block_norm_eps if opts.get('norm') else None
            x = tokens(width, extra, hw)
            with torch.no_grad():
                out = call(block, x, hw)
                ref = official_block(kind, stock_modules[name], x, hw, p,
                                     opts.get('position', 'post'), eps, opts.get('act') != 'none')
                plain = call(stock_modules[name], x, hw)
            assert relative_error(out, ref) <= 1e-5, (kind, opts, name)
            assert relative_error(out, plain) > 1e-3  # the adapter acts


def test_official_configuration_and_houlsby_init():
    model, _ = build_backbone('mmpretrain_swin')
    method = apply_peft(model, dict(type='AdapterPlus'))
    unit = method.units[-1]  # a stage-1 block: width 64
    assert unit.dim == 64 and unit.site == 'post'
    assert (unit.opts.r, unit.opts.drop_path, unit.opts.dropout) == (8, 0.1, 0.0)
    assert torch.equal(unit.param('scaling'), torch.ones(64))  # channel-wise, starts at 1
    for name in ('down_weight', 'up_weight'):  # truncated normal, std 0.01, cut at ±0.02
        w = unit.param(name)
        assert w.abs().max() <= 0.02 and 0.006 < w.std() < 0.012, name
    assert not unit.param('down_bias').any() and not unit.param('up_bias').any()
    # decay-free as the official add_weight_decay: biases and the scaling, not the weights
    free = set(method.no_weight_decay())
    assert f'{unit.name}.adapterplus_scaling' in free
    assert f'{unit.name}.adapterplus_up_bias' in free
    assert f'{unit.name}.adapterplus_up_weight' not in free


def test_drop_path_acts_per_sample_in_training_only():
    model, stock, _ = tuned_and_stock('timm_vit', dict(type='AdapterPlus', drop_path=0.5))
    block, plain_block = model.blocks[0], stock.blocks[0]
    x = torch.randn(64, 17, 32)
    with torch.no_grad():
        plain = plain_block(x)
        term = block(x) - plain  # eval: the adapter's whole term
        model.train()
        dropped = block(x) - plain
    # per sample: dropped (0) or kept and scaled by 1 / keep (2x)
    zero = dropped.flatten(1).abs().amax(1) < 1e-6
    doubled = (dropped - 2 * term).flatten(1).abs().amax(1) < 1e-5
    assert torch.all(zero ^ doubled) and 10 < zero.sum() < 54
    assert term.abs().max() > 1e-3


def test_options_and_merge_refusal():
    with pytest.raises(OptionError, match=r"scaling='chanel' is not one of 'channel', 'learned', 'none'"):
        build_peft(dict(type='AdapterPlus', scaling='chanel'))
    with pytest.raises(OptionError, match=r"position='pre' is not one of 'post', 'parallel'"):
        build_peft(dict(type='AdapterPlus', position='pre'))
    with pytest.raises(OptionError, match=r'pre_dropout=True moves the dropout, but dropout is 0'):
        apply_peft(build_backbone('timm_vit')[0], dict(type='AdapterPlus', pre_dropout=True))
    model, _ = build_backbone('mmdet_swin')
    method = apply_peft(model, dict(type='AdapterPlus', r=2))
    with pytest.raises(MergeError, match='AdapterPlus cannot be merged.*non-linear'):
        method.merge(model)
