"""FacT (TT, TK) and GLoRA equal their official functions, written here as the official code
computes them (JieShibo/PETL-ViT ``FacT/fact_tt.py`` / ``fact_tk.py``: ``fact_forward_attn`` /
``fact_forward_mlp``; Arnav0400/ViT-Slim ``GLoRA/layer.py``: ``SuperScalableLinear.forward``),
on a stock copy of the backbone with the same weights, on ViT and Swin (≤ 1e-5 relative).
"""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import build_backbone, flatten_outputs, randomize_peft
from mmssf.peft import OptionError, apply_peft
from mmssf.peft.targets import find_table, resolve_targets

REL = 1e-5


def rel_err(a, b):
    return max(((x - y).norm() / y.norm()).item() for x, y in zip(a, b))


def roles(model):
    table = find_table(model)
    return {name: role for role in ('qkv', 'proj', 'fc1', 'fc2')
            for name in resolve_targets(model, table, role)}


# -- official FacT ------------------------------------------------------------------------------
def official_fact_update(role, x, u, v, cores, s):
    """The increment the official forwards add to a Linear's output (eval: no dropout).

    ``u``: FacTu.weight (d × D), ``v``: FacTv.weight (D × d); ``cores``: TT — the nn.Linear
    weights (q, k, v) / proj / fc1 (4d × d) / fc2 (d × 4d); TK — the matrices the official
    multiplies from the right (``FacTu(x) @ core``)."""
    FacTu = lambda t: F.linear(t, u)  # noqa: E731
    FacTv = lambda t: F.linear(t, v)  # noqa: E731
    lead, dim, d = x.shape[:-1], u.shape[1], u.shape[0]
    kind, mats = cores
    core = (lambda t, w: F.linear(t, w)) if kind == 'tt' else (lambda t, w: t @ w)
    if role == 'qkv':
        return torch.cat([FacTv(core(FacTu(x), m)) for m in mats], dim=-1) * s
    if role == 'proj':
        return FacTv(core(FacTu(x), mats[0])) * s
    if role == 'fc1':
        k = mats[0].shape[0 if kind == 'tt' else 1] // d
        return FacTv(core(FacTu(x), mats[0]).reshape(*lead, k, d)).reshape(*lead, k * dim) * s
    k = x.shape[-1] // dim  # fc2: the official ``x.reshape(B, N, 4, C)`` before FacTu
    h = FacTu(x.reshape(*lead, k, dim)).reshape(*lead, k * d)
    return FacTv(F.linear(h, mats[0]) if kind == 'tt' else h @ mats[0].t()) * s


def official_tk_cores(c, p, idx, role, d, k):
    """``FacTc @ FacTp[:, idx:idx + n]`` split as the official: q, k, v, proj slices; fc1 / fc2
    ``reshape(d, 4d)``."""
    if role in ('qkv', 'proj'):
        n = 3 if role == 'qkv' else 1
        cc = c @ p[:, idx:idx + n]
        return ('tk', [cc[:, :, i] for i in range(n)]), idx + n
    cc = c @ p[:, idx:idx + k]
    return ('tk', [cc.reshape(d, k * d)]), idx + k


@pytest.mark.parametrize('variant', ['FacTTT', 'FacTTK'])
@pytest.mark.parametrize('backbone_name', ['mmpretrain_vit', 'mmpretrain_swin', 'timm_vit'])
def test_fact_equals_the_official_function(variant, backbone_name):
    model, size = build_backbone(backbone_name)
    stock, _ = build_backbone(backbone_name)
    d, s = 3, 0.7
    apply_peft(model, dict(type=variant, r=d, scale=s))
    randomize_peft(model, std=0.3)
    model.eval()
    modules = dict(model.named_modules())
    hooks, idx = [], {}
    for name, role in sorted(roles(stock).items(), key=lambda kv: list(modules).index(kv[0])):
        mod = modules[name]
        dim = min(mod.in_features, mod.out_features)
        u, v = getattr(model, f'fact_u_{dim}'), getattr(model, f'fact_v_{dim}')
        if variant == 'FacTTT':
            core = mod.fact_core.detach()
            mats = list(core.split(d, 0)) if role == 'qkv' else [core]
            cores = ('tt', mats)
        else:
            cores, idx[dim] = official_tk_cores(getattr(model, f'fact_c_{dim}'),
                                                getattr(model, f'fact_p_{dim}'),
                                                idx.get(dim, 0), role, d,
                                                max(mod.in_features, mod.out_features) // dim)
        hooks.append(dict(stock.named_modules())[name].register_forward_hook(
            lambda m, a, out, role=role, u=u, v=v, cores=cores:
            out + official_fact_update(role, a[0], u, v, cores, s)))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours, official = flatten_outputs(model(x)), flatten_outputs(stock(x))
        plain = flatten_outputs(build_backbone(backbone_name)[0](x))
    assert rel_err(ours, official) <= REL
    assert rel_err(plain, official) > 1e-3  # the update is not negligible


def test_fact_factors_are_shared_and_cores_per_weight():
    model, _ = build_backbone('mmpretrain_swin')  # two stage widths: 32, 64
    method = apply_peft(model, dict(type='FacTTT', r=4))
    shared = sorted(method.method_param_names)
    assert shared == ['fact_u_32', 'fact_u_64', 'fact_v_32', 'fact_v_64']
    assert torch.count_nonzero(model.fact_v_32) == 0  # starts at the pretrained function
    tk, _ = build_backbone('mmpretrain_vit')
    method = apply_peft(tk, dict(type='FacTTK', r=4))
    # 2 blocks x (q, k, v, proj + 2 + 2 MLP slots at ratio 2) columns of P
    assert tk.fact_p_32.shape == (4, 2 * 8) and tk.fact_c_32.shape == (4, 4, 4)
    with pytest.raises(OptionError, match='shared by every target'):
        apply_peft(build_backbone('mmpretrain_vit')[0],
                   dict(type='FacTTT', r=4, targets={'qkv': dict(r=2), 'fc1': None}))


def test_fact_dropout_acts_on_the_core_in_training_only():
    model, size = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='FacTTT', r=4, dropout=0.5))
    randomize_peft(model)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        a = flatten_outputs(model(x))
        torch.manual_seed(1)
        b = flatten_outputs(model(x))
        model.eval()
        c, e = flatten_outputs(model(x)), flatten_outputs(model(x))
    assert rel_err(a, b) > 1e-4 and rel_err(c, e) == 0


# -- official GLoRA -----------------------------------------------------------------------------
def official_glora_linear(x, weight, bias, A, B, C, D, E):
    """``SuperScalableLinear.forward`` with the tensors ``prepare_path`` returns."""
    optimal_weight = weight + weight * A + B
    optimal_bias = bias + bias * D + E
    optimal_prompt = torch.matmul(weight, C).squeeze()
    return F.linear(x, optimal_weight, optimal_bias + optimal_prompt)


def path(mod, name, kind, rows, cols):
    """The official ``prepare_path``: LoRA ``Xd @ Xu``, vector, constant, none (zeros)."""
    if kind == 'lora':
        return getattr(mod, f'glora_{name}_d') @ getattr(mod, f'glora_{name}_u')
    if kind == 'none':
        return torch.zeros(rows, cols) if cols else torch.zeros(1)
    return getattr(mod, f'glora_{name}')


SUPPORTS = [dict(A='lora', B='lora', C='lora', D='vector', E='vector'),
            dict(A='vector', B='constant', C='vector', D='constant', E='none'),
            dict(A='constant', B='vector', C='none', D='none', E='constant')]


@pytest.mark.parametrize('support', range(len(SUPPORTS)))
@pytest.mark.parametrize('backbone_name', ['mmpretrain_vit', 'mmpretrain_swin'])
def test_glora_equals_the_official_function(support, backbone_name):
    config = SUPPORTS[support]
    model, size = build_backbone(backbone_name)
    stock, _ = build_backbone(backbone_name)
    apply_peft(model, dict(type='GLoRA', r=3, **config))
    randomize_peft(model)
    modules = dict(model.named_modules())
    for name in roles(stock):
        mod, linear = modules[name], dict(stock.named_modules())[name]
        out_f, in_f = linear.weight.shape
        A = path(mod, 'A', config['A'], out_f, in_f)
        B = path(mod, 'B', config['B'], out_f, in_f)
        C = path(mod, 'C', config['C'], in_f, 1)
        D = path(mod, 'D', config['D'], out_f, None)
        E = path(mod, 'E', config['E'], out_f, None)
        linear.forward = lambda x, lin=linear, t=(A, B, C, D, E): official_glora_linear(
            x, lin.weight, lin.bias, *t)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours, official = flatten_outputs(model(x)), flatten_outputs(stock(x))
    assert rel_err(ours, official) <= REL


def test_glora_starts_at_the_pretrained_function():
    model, size = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='GLoRA'))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert rel_err(flatten_outputs(model(x)),
                       flatten_outputs(build_backbone('mmpretrain_vit')[0](x))) == 0


# -- the support file ---------------------------------------------------------------------------
def support_file(tmp_path, model, **changes):
    from mmssf.peft.glora import GLoRASupport, backbone_fingerprint
    names = sorted(roles(model))
    supports = {n: dict(SUPPORTS[i % 3]) for i, n in enumerate(names)}
    info = GLoRASupport(rank=2, supports=supports, backbone=backbone_fingerprint(model, names))
    path = info.save(str(tmp_path / 'glora_support.json'))
    if changes:
        raw = json.load(open(path))
        raw.update(changes)
        json.dump(raw, open(path, 'w'))
    return path


def test_glora_reads_its_support_file(tmp_path):
    model, _ = build_backbone('mmpretrain_vit')
    path = support_file(tmp_path, model)
    method = apply_peft(model, dict(type='GLoRA', support=path))
    by_name = {u.name: u.config() for u in method.units}
    assert by_name == json.load(open(path))['supports']
    assert all(u.opts.r == 2 for u in method.units)
    with pytest.raises(OptionError, match='come from the support file'):
        apply_peft(build_backbone('mmpretrain_vit')[0], dict(type='GLoRA', support=path, A='none'))


@pytest.mark.parametrize('damage,match', [
    ('truncate', 'not valid JSON.*truncated or damaged.*glora_search.py'),
    ('format', 'not an mmssf GLoRA support file'),
    ('version', 'version 0; this mmssf reads version 1'),
    ('choice', "has A='LoRA_4', not one of 'lora', 'vector', 'constant', 'none'"),
    ('keys', 'must name exactly A, B, C, D, E'),
    ('missing', 'does not exist: search it first'),
])
def test_glora_damaged_support_file_is_refused_clearly(tmp_path, damage, match):
    model, _ = build_backbone('mmpretrain_vit')
    path = support_file(tmp_path, model)
    raw = json.load(open(path))
    name = next(iter(raw['supports']))
    if damage == 'truncate':
        open(path, 'w').write(json.dumps(raw)[:60])
    elif damage == 'format':
        raw['format'] = 'spt'
    elif damage == 'version':
        raw['version'] = 0
    elif damage == 'choice':
        raw['supports'][name]['A'] = 'LoRA_4'
    elif damage == 'keys':
        del raw['supports'][name]['E']
    elif damage == 'missing':
        path = str(tmp_path / 'nowhere.json')
    if damage in ('format', 'version', 'choice', 'keys'):
        json.dump(raw, open(path, 'w'))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        apply_peft(model, dict(type='GLoRA', support=path))


def test_glora_support_file_for_another_backbone_is_refused(tmp_path):
    vit, _ = build_backbone('mmpretrain_vit')
    path = support_file(tmp_path, vit)
    with pytest.raises(ValueError, match='no Linear of: it was made for another backbone'):
        apply_peft(build_backbone('mmpretrain_swin')[0], dict(type='GLoRA', support=path))
    from mmpretrain.models.backbones import VisionTransformer
    wider = VisionTransformer(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                        feedforward_channels=96), img_size=64, patch_size=16)
    with pytest.raises(ValueError, match='another mmpretrain VisionTransformer architecture: '
                                         'layers differ: layers.0.ffn'):
        apply_peft(wider, dict(type='GLoRA', support=path))
