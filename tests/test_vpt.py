"""VPT on every ViT / Swin implementation: stock output shapes, gradients, merge refused, and on
Swin the official token flow (VPT, Jia et al. ECCV 2022) against a reference written here."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import build_backbone, flatten_outputs, randomize_peft
from mmssf.peft import MergeError, apply_peft, get_peft


@pytest.mark.parametrize('method', ['VPTShallow', 'VPTDeep'])
def test_vpt_shapes_gradients_and_merge_refusal(method, backbone_name):
    model, size = build_backbone(backbone_name)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        stock_shapes = [o.shape for o in flatten_outputs(model(x))]
    apply_peft(model, dict(type=method, num_prompts=4))
    outs = flatten_outputs(model(x))
    assert [o.shape for o in outs] == stock_shapes
    sum(o.square().mean() for o in outs).backward()
    prompts = {n: p for n, p in model.named_parameters() if 'vpt_prompt' in n}
    assert prompts and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts.values())
    assert all(p.grad is None for n, p in model.named_parameters() if n not in prompts)
    with pytest.raises(MergeError, match='VPT'):
        get_peft(model).merge(model)


def test_vpt_vit_cls_output_and_prompt_count():
    from mmpretrain.models.backbones import VisionTransformer
    model = VisionTransformer(arch=dict(embed_dims=32, num_layers=3, num_heads=2,
                                        feedforward_channels=64), img_size=64, patch_size=16)
    apply_peft(model, dict(type='VPTDeep', num_prompts=5))
    out = model(torch.randn(2, 3, 64, 64))
    assert out[0].shape == (2, 32)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3 * 5 * 32


def test_vpt_prompts_matter():
    model, size = build_backbone('mmdet_swin')
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        before = flatten_outputs(model(x))
        apply_peft(model, dict(type='VPTDeep', num_prompts=4))
        after = flatten_outputs(model(x))
    assert max((a - b).abs().max().item() for a, b in zip(before, after)) > 1e-4


# -- Swin: the official VPT token flow ------------------------------------------------------------
# Reference written from the official VPT formulas (KMnP/vpt, PromptedSwinTransformer), one image
# at a time, on the stock modules' weights. Padding to window multiples / even sizes follows the
# stock implementations (zeros at the bottom / right; the official code never pads).
SWINS = ['mmpretrain_swin', 'mmdet_swin', 'mmseg_swin']


def _ln(x, norm):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _relative_position_index(ws):
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing='ij'))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def _shift_mask(hp, wp, ws, shift):
    img = torch.zeros(hp, wp)
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[h, w] = cnt
            cnt += 1
    win = img.view(hp // ws, ws, wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    mask = win[:, None, :] - win[:, :, None]
    return mask.masked_fill(mask != 0, -100.0)


def _official_block(blk, t, hw, num, shift):
    """PromptedSwinTransformerBlock + PromptedWindowAttention on one image's tokens (L x C)."""
    msa = blk.attn.w_msa
    ws = blk.attn.window_size
    heads, channels = msa.num_heads, t.shape[-1]
    shortcut = t
    h = _ln(t, blk.norm1)
    prompts, z = h[:num], h[num:].reshape(*hw, channels)
    z = F.pad(z, (0, 0, 0, (-hw[1]) % ws, 0, (-hw[0]) % ws))
    hp, wp = z.shape[:2]
    if shift:
        z = torch.roll(z, (-shift, -shift), (0, 1))
    windows = z.view(hp // ws, ws, wp // ws, ws, channels).permute(0, 2, 1, 3, 4)
    windows = windows.reshape(-1, ws * ws, channels)
    bias = msa.relative_position_bias_table[_relative_position_index(ws).view(-1)]
    bias = bias.view(ws * ws, ws * ws, heads).permute(2, 0, 1)
    full_bias = torch.zeros(heads, num + ws * ws, num + ws * ws)
    full_bias[:, num:, num:] = bias
    mask = _shift_mask(hp, wp, ws, shift) if shift else None
    prompt_outs, patch_outs = [], []
    for w, window in enumerate(windows):
        tokens = torch.cat([prompts, window])
        q, k, v = F.linear(tokens, msa.qkv.weight, msa.qkv.bias).view(
            -1, 3, heads, channels // heads).permute(1, 2, 0, 3)
        attn = (q * (channels // heads) ** -0.5) @ k.transpose(-2, -1) + full_bias
        if mask is not None:
            attn[:, num:, num:] += mask[w]
        out = (attn.softmax(-1) @ v).transpose(0, 1).reshape(-1, channels)
        out = F.linear(out, msa.proj.weight, msa.proj.bias)
        prompt_outs.append(out[:num])
        patch_outs.append(out[num:])
    z = torch.stack(patch_outs).view(hp // ws, wp // ws, ws, ws, channels)
    z = z.permute(0, 2, 1, 3, 4).reshape(hp, wp, channels)
    if shift:
        z = torch.roll(z, (shift, shift), (0, 1))
    z = z[:hw[0], :hw[1]].reshape(-1, channels)
    t = shortcut + torch.cat([torch.stack(prompt_outs).mean(0), z])
    fc1, fc2 = blk.ffn.layers[0][0], blk.ffn.layers[1]
    return t + fc2(F.gelu(fc1(_ln(t, blk.norm2))))


def _official_merge(merging, t, hw, num):
    """PromptedPatchMerging: prompts repeated 4x along channels, patches x0 x1 x2 x3."""
    channels = t.shape[-1]
    prompts, z = t[:num], t[num:].reshape(*hw, channels)
    z = F.pad(z, (0, 0, 0, hw[1] % 2, 0, hw[0] % 2))
    z = torch.cat([z[0::2, 0::2], z[1::2, 0::2], z[0::2, 1::2], z[1::2, 1::2]], -1)
    out_hw = z.shape[:2]
    t = torch.cat([torch.cat([prompts] * 4, -1), z.reshape(-1, 4 * channels)])
    # the stock unfold orders features channel-major (c * 4 + kernel position); the official
    # layout is position-major with positions (0,0), (1,0), (0,1), (1,1)
    perm = torch.tensor([c * 4 + pos for pos in (0, 2, 1, 3) for c in range(channels)])
    norm = merging.norm
    t = F.layer_norm(t, (4 * channels, ), norm.weight[perm], norm.bias[perm], norm.eps)
    return F.linear(t, merging.reduction.weight[:, perm]), out_hw


def official_swin_vpt(stock, img, prompts, num, deep):
    """Outputs of the official token flow: per output stage the patch map (B x C x H x W) and the
    mean over all normalised tokens (the official final norm + average pool)."""
    outs, pooled = {}, {}
    for b in range(img.shape[0]):
        t, hw = stock.patch_embed(img[b:b + 1])
        t = torch.cat([prompts['stages.0.blocks.0'], t[0]])
        for s, stage in enumerate(stock.stages):
            for j, blk in enumerate(stage.blocks):
                if deep:
                    t = torch.cat([prompts[f'stages.{s}.blocks.{j}'], t[num:]])
                shift = blk.attn.window_size // 2 if j % 2 else 0
                t = _official_block(blk, t, hw, num, shift)
            if hasattr(stock, f'norm{s}'):
                normed = _ln(t, getattr(stock, f'norm{s}'))
                outs.setdefault(s, []).append(normed[num:].T.reshape(-1, *hw))
                pooled.setdefault(s, []).append(normed.mean(0))
            if stage.downsample is not None:
                t, hw = _official_merge(stage.downsample, t, hw, num)
    return ({s: torch.stack(v) for s, v in outs.items()},
            {s: torch.stack(v) for s, v in pooled.items()})


def _tuned_copy(name, method, num=3, **kw):
    stock, size = build_backbone(name)
    tuned = copy.deepcopy(stock)
    apply_peft(tuned, dict(type=method, num_prompts=num, **kw))
    randomize_peft(tuned)
    prompts = {n[:-len('.vpt_prompt')]: p.detach()
               for n, p in tuned.named_parameters() if n.endswith('vpt_prompt')}
    return stock, tuned, prompts, size


@pytest.mark.parametrize('size', ['conftest', (76, 88)])  # 18x22 / 19x22 patches: both pad
@pytest.mark.parametrize('method', ['VPTShallow', 'VPTDeep'])
@pytest.mark.parametrize('name', SWINS)
def test_swin_token_flow_equals_official(name, method, size):
    num = 3
    stock, tuned, prompts, default_size = _tuned_copy(name, method, num)
    size = default_size if size == 'conftest' else size
    depths = [len(stage.blocks) for stage in stock.stages]
    assert len(prompts) == (sum(depths) if method == 'VPTDeep' else 1)
    img = torch.randn(2, 3, *size)
    with torch.no_grad():
        got = flatten_outputs(tuned(img))
        maps, pooled = official_swin_vpt(stock, img, prompts, num, method == 'VPTDeep')
    assert len(got) == len(maps) == 2
    last = len(stock.stages) - 1
    for s, out in zip(sorted(maps), got):
        assert out.shape == maps[s].shape
        if name == 'mmpretrain_swin' and s == last:  # classifier: prompts join the average pool
            torch.testing.assert_close(out.mean((2, 3)), pooled[s], atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(out, maps[s], atol=1e-5, rtol=0)


def test_swin_pool_prompts_off_returns_patch_map():
    stock, tuned, prompts, size = _tuned_copy('mmpretrain_swin', 'VPTDeep', pool_prompts=False)
    img = torch.randn(1, 3, *size)
    with torch.no_grad():
        got = flatten_outputs(tuned(img))
        maps, pooled = official_swin_vpt(stock, img, prompts, 3, deep=True)
    torch.testing.assert_close(got[-1], maps[1], atol=1e-5, rtol=0)
    # ... and that map alone pools to something else than the official feature
    assert (got[-1].mean((2, 3)) - pooled[1]).abs().max() > 1e-3


@pytest.mark.parametrize('name', SWINS)
def test_swin_prompts_are_tokens_through_mlp_and_merging(name):
    """What the discard-after-attention version never did: the MLP of every block and the
    reduction of every patch merging process the prompt tokens with the patches."""
    num = 4
    model, size = build_backbone(name)
    apply_peft(model, dict(type='VPTShallow', num_prompts=num))
    seen = {}
    for n, m in model.named_modules():
        if n.endswith('ffn') or n.endswith('downsample.reduction'):
            m.register_forward_pre_hook(
                lambda mod, args, n=n: seen.__setitem__(n, args[0].shape[1]))
    hw_seen = {}
    for n, m in model.named_modules():
        if n.endswith('.attn') and '.blocks.' in n:
            m.register_forward_pre_hook(
                lambda mod, args, n=n: hw_seen.__setitem__(n, args[1][0] * args[1][1]))
    with torch.no_grad():
        model(torch.randn(1, 3, *size))
    for n, length in seen.items():
        if n.endswith('ffn'):
            assert length == hw_seen[n[:-len('ffn')] + 'attn'] + num, n
        else:
            assert length > num  # merged patches and the prompts
    assert any(n.endswith('reduction') for n in seen)


def test_swin_batch_images_do_not_exchange_prompts():
    _, tuned, _, size = _tuned_copy('mmdet_swin', 'VPTShallow')
    img = torch.randn(3, 3, *size)
    with torch.no_grad():
        together = flatten_outputs(tuned(img))
        alone = [flatten_outputs(tuned(img[i:i + 1])) for i in range(3)]
    for s, out in enumerate(together):
        torch.testing.assert_close(out, torch.cat([a[s] for a in alone]), atol=1e-5, rtol=0)


@pytest.mark.parametrize('method', ['VPTShallow', 'VPTDeep'])
@pytest.mark.parametrize('name', SWINS)
def test_swin_gradients_reach_every_prompt_set_and_unapply_restores(name, method):
    stock, tuned, prompts, size = _tuned_copy(name, method)
    img = torch.randn(2, 3, *size)
    sum(o.square().mean() for o in flatten_outputs(tuned(img))).backward()
    grads = {n: p.grad for n, p in tuned.named_parameters() if p.requires_grad}
    assert len(grads) == len(prompts)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    with pytest.raises(MergeError, match='prompts change the token sequence'):
        get_peft(tuned).merge(tuned)
    get_peft(tuned).unapply(tuned)
    assert 'forward' not in tuned.stages[0].blocks[0].attn.w_msa.__dict__
    with torch.no_grad():
        for a, b in zip(flatten_outputs(stock(img)), flatten_outputs(tuned(img))):
            assert torch.equal(a, b)


def test_swin_training_mode_drop_path_keeps_prompts_with_their_image():
    """One DropPath draw per image covers its prompts and patches (shapes survive training)."""
    model, size = build_backbone('mmdet_swin', drop_path_rate=0.5)
    apply_peft(model, dict(type='VPTDeep', num_prompts=2))
    model.train()
    outs = flatten_outputs(model(torch.randn(2, 3, *size)))
    assert [o.shape[1] for o in outs] == [32, 64]


def test_pool_prompts_refused_on_dense_backbones():
    model, _ = build_backbone('mmdet_swin')
    with pytest.raises(ValueError, match='pool_prompts=True.*feeds dense heads'):
        apply_peft(model, dict(type='VPTDeep', num_prompts=2, pool_prompts=True))


def test_swin_targets_must_be_blocks():
    model, _ = build_backbone('mmseg_swin')
    with pytest.raises(ValueError, match="prompt sets on blocks"):
        apply_peft(model, dict(type='VPTDeep', num_prompts=2, targets=['window_attn']))


def test_swin_deep_on_some_blocks_carries_prompts_through_the_others():
    stock, size = build_backbone('mmpretrain_swin')
    tuned = copy.deepcopy(stock)
    apply_peft(tuned, dict(type='VPTDeep', num_prompts=2, targets=[r'stages\.0\.blocks\.0']))
    assert [n for n, p in tuned.named_parameters() if p.requires_grad] == \
        ['stages.0.blocks.0.vpt_prompt']
    prompt = tuned.stages[0].blocks[0].vpt_prompt.detach()
    img = torch.randn(1, 3, *size)
    with torch.no_grad():
        got = flatten_outputs(tuned(img))
        maps, pooled = official_swin_vpt(stock, img, {'stages.0.blocks.0': prompt}, 2, deep=False)
    torch.testing.assert_close(got[0], maps[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1].mean((2, 3)), pooled[1], atol=1e-5, rtol=0)


def test_swin_deepcopy_is_independent_and_checkpointing_gives_same_gradients():
    """EMA hooks deep-copy the model; ``with_cp`` re-runs every block's hooks in backward."""
    plain, size = build_backbone('mmpretrain_swin')
    ckpt, _ = build_backbone('mmpretrain_swin', with_cp=True)
    for model in (plain, ckpt):
        apply_peft(model, dict(type='VPTDeep', num_prompts=3))
    ckpt.load_state_dict(plain.state_dict())
    img = torch.randn(2, 3, *size)
    for model in (plain, ckpt):
        sum(o.square().mean() for o in flatten_outputs(model(img))).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)

    copied = copy.deepcopy(plain)
    with torch.no_grad():
        before = flatten_outputs(plain(img))
        copied.stages[0].blocks[0].vpt_prompt.add_(torch.randn(3, 32))
        assert all(torch.equal(a, b) for a, b in zip(before, flatten_outputs(plain(img))))
        assert (flatten_outputs(copied(img))[0] - before[0]).abs().max() > 1e-3
