"""Shared fixtures: tiny instances of every supported backbone implementation (random init)."""
import os

import pytest
import torch

os.environ.setdefault('OMP_NUM_THREADS', '2')


def pytest_addoption(parser):
    parser.addoption('--device', default='cpu', choices=('cpu', 'cuda'),
                     help='where the device-generic tests (merge equivalence, SPT, AMP, Runner '
                          'flows) run: cpu (default, CI) or cuda (benchmarks/gpu_proof.sh)')


@pytest.fixture(scope='session')
def device(request):
    """The torch device the device-generic tests run on (``pytest --device cuda``)."""
    name = request.config.getoption('--device')
    if name == 'cuda' and not torch.cuda.is_available():
        pytest.fail('--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)')
    return torch.device(name)


@pytest.fixture(scope='session')
def device_env(device):
    """Environment for tool subprocesses: mmengine puts the model on CUDA whenever it sees one, so
    ``--device cpu`` hides the GPUs from the tools."""
    return {} if device.type == 'cuda' else {'CUDA_VISIBLE_DEVICES': ''}


def _mmpretrain_vit(**kw):
    from mmpretrain.models.backbones import VisionTransformer
    return VisionTransformer(
        arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64), img_size=64,
        patch_size=16, out_indices=(0, 1), out_type='featmap', **kw)


def _mmpretrain_swin(**kw):
    from mmpretrain.models.backbones import SwinTransformer
    return SwinTransformer(arch=dict(embed_dims=32, depths=[2, 1], num_heads=[2, 2]), img_size=64,
                           window_size=7, out_indices=(0, 1), **kw)


def _mmdet_swin(**kw):
    from mmdet.models.backbones import SwinTransformer
    return SwinTransformer(embed_dims=32, depths=(2, 1), num_heads=(2, 2), strides=(4, 2),
                           window_size=7, out_indices=(0, 1), **kw)


def _mmseg_swin(**kw):
    from mmseg.models.backbones import SwinTransformer
    return SwinTransformer(embed_dims=32, depths=(2, 1), num_heads=(2, 2), strides=(4, 2),
                           window_size=7, out_indices=(0, 1), **kw)


def _mmseg_vit(**kw):
    from mmseg.models.backbones import VisionTransformer
    return VisionTransformer(img_size=64, patch_size=16, embed_dims=32, num_layers=2, num_heads=2,
                             mlp_ratio=2, out_indices=(0, 1), final_norm=True, **kw)


def _timm_vit(**kw):
    # (no classifier, average-pooled: every token reaches the output, as the other fixtures'
    # maps do; a timm model with its classifier inside: tests/test_timm.py)
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                             mlp_ratio=2.0, num_classes=0, global_pool='avg', **kw)


# name -> (factory, input size). Swin inputs are not multiples of the window, so padding runs.
BACKBONES = {
    'mmpretrain_vit': (_mmpretrain_vit, (64, 64)),
    'mmpretrain_swin': (_mmpretrain_swin, (72, 88)),
    'mmdet_swin': (_mmdet_swin, (72, 88)),
    'mmseg_swin': (_mmseg_swin, (72, 88)),
    'mmseg_vit': (_mmseg_vit, (80, 96)),
    'timm_vit': (_timm_vit, (64, 64)),
}


def build_backbone(name, seed=0, **kw):
    torch.manual_seed(seed)
    factory, size = BACKBONES[name]
    model = factory(**kw)
    model.init_weights()
    model.eval()  # (mmdet Swin.train returns None)
    return model, size


def flatten_outputs(outs):
    """Backbone outputs (tensor / tuple / nested lists) -> list of tensors."""
    if isinstance(outs, torch.Tensor):
        return [outs]
    flat = []
    for out in outs:
        flat += flatten_outputs(out)
    return flat


def randomize_peft(model, seed=1, std=0.1):
    """Give every trainable parameter a random non-identity value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture(params=sorted(BACKBONES))
def backbone_name(request):
    return request.param


@pytest.fixture(scope='session')
def folder_data(tmp_path_factory):
    """A tiny generated class-per-folder image dataset for the Runner-level tests."""
    from mmssf.datasets.image_folder import make_image_folder
    return make_image_folder(str(tmp_path_factory.mktemp('folder')), per_class=2) + '/'
