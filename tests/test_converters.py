"""Weight converters of the papers' pretrained backbones (no downloads: tiny random models).

timm ViT (state dict and Google ``.npz``) -> mmpretrain / mmseg ViT, and official Swin ->
mmpretrain Swin: the converted file loads ``strict=True`` into the mm backbone, which then computes
the source model's features (<= 1e-5).
"""
import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch

from runner_utils import ROOT, run_tool

VIT_TOOL = 'tools/model_converters/vit_timm_to_mm.py'
SWIN_TOOL = 'tools/model_converters/swin_official_to_mm.py'


def _tool(path):
    spec = importlib.util.spec_from_file_location(osp.basename(path)[:-3], osp.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _randomize(model, seed=0):
    """Random values everywhere (timm zero-inits biases / cls token: they must be checked too)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            centre = 1.0 if name.endswith('norm.weight') or 'norm1.weight' in name \
                or 'norm2.weight' in name else 0.0
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + centre)
    return model.eval()


# ----------------------------------------------------------------------------- ViT
def _timm_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer
    args = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                num_classes=7)
    args.update(kw)
    return _randomize(VisionTransformer(**args))


def _eval(model):
    model.eval()  # (some mm backbones' train() returns None)
    return model


def _mm_vit(target):
    if target == 'mmpretrain':
        from mmpretrain.models.backbones import VisionTransformer
        return _eval(VisionTransformer(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                                 feedforward_channels=64),
                                       img_size=64, patch_size=16, out_type='raw'))
    from mmseg.models.backbones import VisionTransformer
    return _eval(VisionTransformer(img_size=64, patch_size=16, embed_dims=32, num_layers=2,
                                   num_heads=2, mlp_ratio=2, out_indices=(1, ), final_norm=True,
                                   patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6),
                                   output_cls_token=True))


def _assert_vit_equal(timm_model, mm_model, target):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = timm_model.forward_features(x)  # (B, 1 + 16, C), final norm applied
        out = mm_model(x)
    if target == 'mmpretrain':
        torch.testing.assert_close(out[-1], ref, atol=1e-5, rtol=0)
    else:
        featmap, cls = out[-1]
        torch.testing.assert_close(cls, ref[:, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(featmap.flatten(2).transpose(1, 2), ref[:, 1:], atol=1e-5, rtol=0)


def _load_converted(path, model):
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    model.load_state_dict(ckpt['state_dict'], strict=True)
    return ckpt


@pytest.mark.parametrize('target', ['mmpretrain', 'mmseg'])
def test_timm_vit_state_dict(tmp_path, target):
    timm_model = _timm_vit()
    src = tmp_path / 'vit.pth'
    torch.save(timm_model.state_dict(), src)
    out = tmp_path / f'vit_{target}.pth'
    log = run_tool([VIT_TOOL, str(src), str(out), '--target', target])
    assert 'backbone settings' in log
    mm_model = _mm_vit(target)
    ckpt = _load_converted(out, mm_model)
    assert not any(k.startswith('head') for k in ckpt['state_dict'])
    assert ckpt['meta']['target'] == target
    _assert_vit_equal(timm_model, mm_model, target)


def test_timm_vit_safetensors_and_prefix(tmp_path):
    from safetensors.torch import save_file
    timm_model = _timm_vit()
    src = tmp_path / 'vit.safetensors'
    save_file(timm_model.state_dict(), str(src))
    out = tmp_path / 'vit.pth'
    run_tool([VIT_TOOL, str(src), str(out), '--target', 'mmpretrain', '--prefix', 'backbone.'])
    state = torch.load(out, weights_only=True)['state_dict']
    assert all(k.startswith('backbone.') for k in state)
    mm_model = _mm_vit('mmpretrain')
    mm_model.load_state_dict({k[len('backbone.'):]: v for k, v in state.items()}, strict=True)
    _assert_vit_equal(timm_model, mm_model, 'mmpretrain')


def _write_google_npz(model, path):
    """The original google-research/vision_transformer layout (``ViT-B_16.npz``) of ``model``."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dims, heads = model.embed_dim, model.blocks[0].attn.num_heads
    w = {'embedding/kernel': sd['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
         'embedding/bias': sd['patch_embed.proj.bias'], 'cls': sd['cls_token'],
         'Transformer/posembed_input/pos_embedding': sd['pos_embed'],
         'Transformer/encoder_norm/scale': sd['norm.weight'],
         'Transformer/encoder_norm/bias': sd['norm.bias'],
         'head/kernel': sd['head.weight'].T, 'head/bias': sd['head.bias'],
         'pre_logits/kernel': np.zeros((dims, dims), np.float32),
         'pre_logits/bias': np.zeros(dims, np.float32)}
    for i in range(len(model.blocks)):
        b, t = f'blocks.{i}.', f'Transformer/encoderblock_{i}/'
        w[t + 'LayerNorm_0/scale'], w[t + 'LayerNorm_0/bias'] = sd[b + 'norm1.weight'], sd[b + 'norm1.bias']
        w[t + 'LayerNorm_2/scale'], w[t + 'LayerNorm_2/bias'] = sd[b + 'norm2.weight'], sd[b + 'norm2.bias']
        qkv_w, qkv_b = sd[b + 'attn.qkv.weight'], sd[b + 'attn.qkv.bias']
        for j, name in enumerate(('query', 'key', 'value')):
            rows = slice(j * dims, (j + 1) * dims)
            w[f'{t}MultiHeadDotProductAttention_1/{name}/kernel'] = \
                qkv_w[rows].T.reshape(dims, heads, dims // heads)
            w[f'{t}MultiHeadDotProductAttention_1/{name}/bias'] = \
                qkv_b[rows].reshape(heads, dims // heads)
        w[t + 'MultiHeadDotProductAttention_1/out/kernel'] = \
            sd[b + 'attn.proj.weight'].reshape(dims, heads, dims // heads).transpose(1, 2, 0)
        w[t + 'MultiHeadDotProductAttention_1/out/bias'] = sd[b + 'attn.proj.bias']
        for r in range(2):
            w[f'{t}MlpBlock_3/Dense_{r}/kernel'] = sd[f'{b}mlp.fc{r + 1}.weight'].T
            w[f'{t}MlpBlock_3/Dense_{r}/bias'] = sd[f'{b}mlp.fc{r + 1}.bias']
    np.savez(path, **w)


@pytest.mark.parametrize('target', ['mmpretrain', 'mmseg'])
def test_google_npz(tmp_path, target):
    """Sizes read from the arrays, weights loaded by timm's own .npz loader, then converted."""
    timm_model = _timm_vit()
    src = tmp_path / 'ViT-tiny.npz'
    _write_google_npz(timm_model, src)
    tool = _tool(VIT_TOOL)
    source, heads = tool.load_source(str(src))
    assert heads == 2
    for key, value in timm_model.state_dict().items():
        if not key.startswith('head'):
            torch.testing.assert_close(source[key], value, atol=0, rtol=0)
    out = tmp_path / 'vit.pth'
    log = run_tool([VIT_TOOL, str(src), str(out), '--target', target])
    assert "'num_heads': 2" in log
    mm_model = _mm_vit(target)
    _load_converted(out, mm_model)
    _assert_vit_equal(timm_model, mm_model, target)


def test_vit_table_errors():
    tool = _tool(VIT_TOOL)
    sd = _timm_vit(num_classes=0).state_dict()
    with pytest.raises(tool.ConversionError, match=r'no known timm ViT layout: reg_token'):
        tool.convert({**sd, 'reg_token': torch.zeros(1, 4, 32)}, 'mmpretrain')
    partial = {k: v for k, v in sd.items() if k != 'blocks.1.mlp.fc2.weight'}
    with pytest.raises(tool.ConversionError, match=r'missing: blocks\.1\.mlp\.fc2\.weight'):
        tool.convert(partial, 'mmseg')
    scaled = _timm_vit(init_values=0.1).state_dict()
    with pytest.raises(tool.ConversionError, match=r'mmseg VisionTransformer has no tensor for: '
                                                   r'blocks\.0\.ls1\.gamma'):
        tool.convert(scaled, 'mmseg')
    converted = tool.convert(scaled, 'mmpretrain')  # layer scale exists in mmpretrain
    assert 'layers.0.attn.gamma1.weight' in converted and 'layers.1.ffn.gamma2.weight' in converted


def test_vit_cli_error_exits(tmp_path):
    src = tmp_path / 'bad.pth'
    torch.save({'blocks.0.foo.weight': torch.zeros(1)}, src)
    with pytest.raises(AssertionError) as err:
        run_tool([VIT_TOOL, str(src), str(tmp_path / 'out.pth'), '--target', 'mmpretrain'])
    assert 'blocks.0.foo.weight' in str(err.value)
    assert not (tmp_path / 'out.pth').exists()


# ----------------------------------------------------------------------------- Swin
def _timm_swin():
    from timm.models.swin_transformer import SwinTransformer
    return _randomize(SwinTransformer(img_size=64, patch_size=4, embed_dim=32, depths=(2, 2),
                                      num_heads=(2, 4), window_size=4, num_classes=5))


def _official_state_dict(timm_swin):
    """timm's Swin in the official layout (the inverse of timm's ``checkpoint_filter_fn``):
    downsample at the end of stage i (timm: start of stage i + 1), ``head`` not ``head.fc``,
    and the official persistent buffers ``relative_position_index`` / ``attn_mask``."""
    import re
    out = {}
    for key, value in timm_swin.state_dict().items():
        key = re.sub(r'layers\.(\d+)\.downsample', lambda m: f'layers.{int(m.group(1)) - 1}.downsample', key)
        out[key.replace('head.fc.', 'head.')] = value
    for name, buf in timm_swin.named_buffers():
        if name.endswith(('relative_position_index', 'attn_mask')):
            out[name] = buf
    assert any(k.endswith('attn_mask') for k in out) and 'layers.0.downsample.reduction.weight' in out
    return out


def _mm_swin():
    from mmpretrain.models.backbones import SwinTransformer
    return _eval(SwinTransformer(arch=dict(embed_dims=32, depths=[2, 2], num_heads=[2, 4]),
                                 img_size=64, window_size=4, out_indices=(1, ), drop_path_rate=0.0))


def test_official_swin_to_mmpretrain(tmp_path):
    timm_swin = _timm_swin()
    src = tmp_path / 'swin_official.pth'
    torch.save({'model': _official_state_dict(timm_swin)}, src)
    out = tmp_path / 'swin_mm.pth'
    log = run_tool([SWIN_TOOL, str(src), str(out)])
    assert "'depths': [2, 2], 'num_heads': [2, 4]" in log and "'window_size': 4" in log
    mm_swin = _mm_swin()
    ckpt = _load_converted(out, mm_swin)
    assert 'norm1.weight' in ckpt['state_dict']  # the official final norm, as mmpretrain names it
    assert not any('attn_mask' in k or k.startswith('head') for k in ckpt['state_dict'])
    # patch merging: channels reordered (official 2x2 order != nn.Unfold's), shapes unchanged
    official = _official_state_dict(timm_swin)['layers.0.downsample.reduction.weight']
    converted = ckpt['state_dict']['stages.0.downsample.reduction.weight']
    assert converted.shape == official.shape and not torch.equal(converted, official)

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = timm_swin.forward_features(x)  # (B, H, W, C) after the final norm
        feat = mm_swin(x)[-1]  # (B, C, H, W) after norm1
    torch.testing.assert_close(feat.permute(0, 2, 3, 1), ref, atol=1e-5, rtol=0)


def test_official_swin_without_buffers_and_errors():
    tool = _tool(SWIN_TOOL)
    official = _official_state_dict(_timm_swin())
    bare = {k: v for k, v in official.items() if not k.endswith(('attn_mask', 'position_index'))}
    converted = tool.convert(bare)  # the index is written as mmpretrain builds it
    assert converted.keys() == _mm_swin().state_dict().keys()
    for key in [k for k in converted if k.endswith('relative_position_index')]:
        torch.testing.assert_close(converted[key], official[key.replace('stages', 'layers')
                                                            .replace('w_msa.', '')], atol=0, rtol=0)

    with pytest.raises(tool.ConversionError, match=r'no official Swin \(v1\) layout: layers\.0\.blocks\.0\.foo'):
        tool.convert({**official, 'layers.0.blocks.0.foo': torch.zeros(1)})
    with pytest.raises(tool.ConversionError, match=r'missing: layers\.1\.blocks\.1\.attn\.qkv\.weight'):
        tool.convert({k: v for k, v in official.items() if k != 'layers.1.blocks.1.attn.qkv.weight'})
    with pytest.raises(tool.ConversionError, match=r'missing: layers\.0\.downsample\.reduction'):
        tool.convert({k: v for k, v in official.items() if 'downsample.reduction' not in k})
    wrong = dict(official)
    wrong['layers.0.blocks.0.attn.relative_position_index'] = \
        official['layers.0.blocks.0.attn.relative_position_index'].T.contiguous()
    with pytest.raises(tool.ConversionError, match='differs from mmpretrain'):
        tool.convert(wrong)
