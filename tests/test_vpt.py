"""VPT on every ViT / Swin implementation: stock output shapes, gradients, merge refused."""
import pytest
import torch

from conftest import build_backbone, flatten_outputs
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
