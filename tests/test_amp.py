"""Mixed precision: every registered method trains under bf16 and fp16 autocast through the optim
wrapper that ``tools/train.py --amp`` selects (``mmssf.AmpOptimWrapper``, built by mmengine's
``build_optim_wrapper`` with mmssf's constructor, stepped by ``BaseModel.train_step``: the Runner's
code path), on the tiny mmpretrain ViT / Swin and mmdet Swin; and SSF's op stays exact for scales
near 0 in low precision.

Stated tolerances (measured on CPU with these tiny models, seeds fixed; margins ~3-5x):

* AMP gradients against the float32 gradients of the same step (same drop-path draws), per
  trainable tensor: cosine similarity >= ``GRAD_COS`` (bf16 0.75, fp16 0.99), or a largest error
  <= ``GRAD_ATOL`` (bf16 1e-3, fp16 1e-4) of the model's largest float32 gradient entry. Measured:
  the lowest cosines are bf16's on Swin's early LayerNorm biases, 0.84 — the stock model's own
  noise (BitFit and full fine-tuning get the same on those biases as SSF / RLRR on the shifts
  after them); every other tensor is >= 0.97 in bf16 and >= 0.995 in fp16 except those whose
  exact gradient is ~0 by cancellation (the key bias of SPT-Adapter's qkv adapter: softmax ignores
  a shift of all keys; Mona's inner tensors behind its 1e-6 gate), whose errors are <= 3e-5 (bf16)
  and <= 3e-6 (fp16) of that scale. A float32 gradient that is exactly 0 (LoRA's A while B is 0)
  must stay exactly 0;
* merge after AMP training: float32 outputs of the tuned and the merged backbone within
  ``MERGE_ATOL_FP32`` = 1e-5 (as in the merge tests; measured <= 3.6e-6), and under autocast
  within ``MERGE_RTOL_AMP`` (bf16 5e-2, fp16 1e-2) of the largest output magnitude, since the
  merged and the tuned model round differently (measured <= 1.2e-2 bf16, <= 1.3e-3 fp16).
"""
import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from torch import nn

from conftest import build_backbone, flatten_outputs
from method_matrix import AMP_CASES
from mmssf.engine.amp import use_amp
from mmssf.peft import get_peft
from mmssf.peft.functional import MIN_RECOVERABLE_SCALE, output_recovers_input, scale_shift
from mmssf.peft.registry_facts import method_classes

METHODS = [cls.__name__ for cls in method_classes()]  # from the registry, not from AMP_CASES
AMP_BACKBONES = ('mmpretrain_vit', 'mmpretrain_swin', 'mmdet_swin')
DTYPES = ('bfloat16', 'float16')
STEPS = 2
GRAD_COS = {'bfloat16': 0.75, 'float16': 0.99}
GRAD_ATOL = {'bfloat16': 1e-3, 'float16': 1e-4}
MERGE_ATOL_FP32 = 1e-5
MERGE_RTOL_AMP = {'bfloat16': 5e-2, 'float16': 1e-2}


class TinyClassifier(BaseModel):
    """A tuned backbone, mean-pooled feature maps, linear head: the smallest mmengine model
    whose ``train_step`` runs what the Runner runs."""

    def __init__(self, backbone, size, num_classes=3):
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            dims = sum(o.shape[1] for o in flatten_outputs(backbone(torch.zeros(1, 3, *size))))
        self.head = nn.Linear(dims, num_classes)
        self.logit_dtype = None

    def forward(self, inputs, labels=None, mode='tensor'):
        # every output feeds the head, so every output norm's tensors get gradients
        feats = [o.mean((2, 3)) for o in flatten_outputs(self.backbone(inputs))]
        logits = self.head(torch.cat(feats, 1))
        self.logit_dtype = logits.dtype
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits.float(), labels))
        return logits


def amp_wrapper(model, dtype, device):
    cfg = ConfigDict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3),
                                        constructor='mmssf.PeftOptimWrapperConstructor'))
    use_amp(cfg, dtype)  # exactly what tools/train.py --amp --amp-dtype DTYPE does
    cfg.optim_wrapper.device = device.type
    return build_optim_wrapper(model, cfg.optim_wrapper)


def test_every_registered_method_has_an_amp_row():
    missing = sorted(set(METHODS) - set(AMP_CASES))
    assert not missing, f'no AMP row in tests/method_matrix.py AMP_CASES for {missing}'


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('backbone_name', AMP_BACKBONES)
@pytest.mark.parametrize('method', METHODS)
def test_amp_training_and_merge(tmp_path, method, backbone_name, dtype, device):
    assert method in AMP_CASES, f'{method}: no AMP row in tests/method_matrix.py AMP_CASES'
    from mmssf.peft import apply_peft
    backbone, size = build_backbone(backbone_name)
    peft = apply_peft(backbone, AMP_CASES[method](backbone, tmp_path))
    torch.manual_seed(0)
    model = TinyClassifier(backbone, size).to(device)
    model.train()
    gen = torch.Generator().manual_seed(0)
    batch = dict(inputs=torch.randn(2, 3, *size, generator=gen),
                 labels=torch.randint(0, 3, (2, ), generator=gen))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable

    # float32 reference gradients of the first step (same drop-path draws: same seed)
    torch.manual_seed(1)
    data = model.data_preprocessor(batch, True)
    model._run_forward(data, mode='loss')['loss'].backward()
    reference = {n: p.grad.clone() for n, p in trainable.items()}
    model.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in trainable.items()}

    wrapper = amp_wrapper(model, dtype, device)
    low = getattr(torch, dtype)
    # step 1 by hand (what train_step does), to look at the gradients
    torch.manual_seed(1)
    with wrapper.optim_context(model):
        data = model.data_preprocessor(batch, True)
        loss, _ = model.parse_losses(model._run_forward(data, mode='loss'))
    assert model.logit_dtype == low  # autocast was on
    assert torch.isfinite(loss)
    wrapper.backward(loss)
    wrapper.loss_scaler.unscale_(wrapper.optimizer)
    scale = max(g.abs().max().item() for g in reference.values())  # the model's gradient scale
    for name, param in trainable.items():
        grad = param.grad
        assert grad is not None, f'{method}: no gradient reached {name}'
        assert grad.dtype == param.dtype == torch.float32, (name, grad.dtype)
        assert torch.isfinite(grad).all(), name
        ref = reference[name]
        if ref.abs().max() == 0:
            assert grad.abs().max() == 0, name
        else:
            cos = nn.functional.cosine_similarity(grad.flatten(), ref.flatten(), dim=0)
            err = (grad - ref).abs().max().item() / scale
            assert cos >= GRAD_COS[dtype] or err <= GRAD_ATOL[dtype], \
                f'{method} {name}: cos(AMP grad, fp32 grad) = {cos:.4f}, max error {err:.1e}'
    wrapper.step()
    wrapper.zero_grad()
    for _ in range(STEPS - 1):
        log = model.train_step(batch, wrapper)
        assert torch.isfinite(log['loss']), log
    moved = [n for n, p in trainable.items() if not torch.equal(p.detach(), before[n])]
    untrained = sorted(set(trainable) - set(moved))
    assert not untrained, f'{method}: untrained {untrained}'

    if not peft.mergeable or peft.merge_blockers():
        return
    model.eval()
    x = batch['inputs'].to(device)
    with torch.no_grad():
        tuned = flatten_outputs(backbone(x))
        with torch.autocast(device.type, dtype=low):
            tuned_amp = flatten_outputs(backbone(x))
        get_peft(backbone).merge(backbone)
        merged = flatten_outputs(backbone(x))
        with torch.autocast(device.type, dtype=low):
            merged_amp = flatten_outputs(backbone(x))
    for t, m in zip(tuned, merged):
        assert (t - m).abs().max().item() <= MERGE_ATOL_FP32
    for t, m in zip(tuned_amp, merged_amp):
        assert t.dtype == m.dtype
        rel = ((t.float() - m.float()).abs().max() / t.float().abs().max()).item()
        assert rel <= MERGE_RTOL_AMP[dtype], f'{method}: |tuned - merged| / max |tuned| = {rel:.2e}'


# -- SSF's op in low precision: scales near 0 ---------------------------------------------------
def _reference_scale_grad(x, scale, shift, grad):
    s, b = scale.detach().clone().requires_grad_(), shift.detach().clone().requires_grad_()
    (x.float() * s + b).backward(grad.float())
    return s.grad


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16', 'float32'])
@pytest.mark.parametrize('near_zero', [0.0, 1e-3, 0.04])
def test_ssf_scale_gradient_is_exact_for_scales_near_zero(dtype, near_zero):
    """γ -> 0 with β = 1: y = γ x + β rounds to β in low precision, so rebuilding x from y gives
    garbage (0 / 0 at γ = 0). The op must save its input then; the gradient of γ stays Σ g·x."""
    low = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 16, generator=gen).to(low)
    grad = torch.randn(4, 6, 16, generator=gen).to(low)
    scale = torch.ones(16)
    scale[:4] = near_zero
    scale.requires_grad_()
    shift = torch.ones(16, requires_grad=True)
    y = scale_shift(x, scale, shift)
    assert y.dtype == low  # the merged op's dtype
    y.backward(grad)
    expected = _reference_scale_grad(x, scale, shift, grad)
    assert torch.isfinite(scale.grad).all()
    torch.testing.assert_close(scale.grad, expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(shift.grad, grad.float().sum((0, 1)), rtol=1e-2, atol=1e-2)


def test_ssf_saves_its_output_while_the_scale_recovers_the_input():
    """The guard keeps the memory saving where it is safe (every |γ| >= max(|β|, 1/16))."""
    for scale_value, output_saved in ((1.0, True), (MIN_RECOVERABLE_SCALE, True),
                                      (MIN_RECOVERABLE_SCALE / 2, False)):
        x = torch.randn(4, 8, requires_grad=True)
        scale = torch.full((8, ), scale_value, requires_grad=True)
        shift = torch.zeros(8, requires_grad=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = scale_shift(x * 2, scale, shift)
        big = [t for t in saved if t.numel() == y.numel()]
        assert len(big) == 1
        is_output = big[0].untyped_storage().data_ptr() == y.untyped_storage().data_ptr()
        assert is_output == output_saved, scale_value
    # |β| > |γ|: the rounding of y would be amplified by |β| / |γ|
    assert output_recovers_input(torch.ones(8), torch.full((8, ), 0.9))
    assert not output_recovers_input(torch.ones(8), torch.full((8, ), 1.5))


def test_amp_wrapper_on_cpu_rejects_dtypes_cpu_cannot_autocast():
    from mmssf.engine.amp import AmpOptimWrapper
    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError, match="dtype='float64' cannot autocast on CPU.*float16, bf"):
        AmpOptimWrapper(optimizer=opt, dtype='float64', device='cpu')
    with pytest.raises(ValueError, match='--amp-dtype .*choose one of float16, bfloat16'):
        use_amp(dict(optim_wrapper=dict(type='OptimWrapper')), 'half')


@pytest.mark.slow  # one Runner training through tools/train.py (~20 s)
@pytest.mark.parametrize('amp_dtype', ['float16'])
def test_train_tool_amp_trains_through_the_amp_wrapper(tmp_path, folder_data, device_env,
                                                       amp_dtype):
    """``tools/train.py --amp --amp-dtype float16`` trains (on CPU too), the loss scaler's state is
    in the resumable checkpoint, and SSF's merged twin is written."""
    import os.path as osp

    from runner_utils import CONFIGS, data_options, run_tool, write_peft_config
    cfg = write_peft_config(tmp_path / 'ssf.py', osp.join(CONFIGS, 'vit-tiny_folder-cls.py'),
                            'VisionTransformer', dict(type='SSF'))
    work = tmp_path / 'work'
    log = run_tool(['tools/train.py', cfg, '--work-dir', str(work), '--amp', '--amp-dtype',
                    amp_dtype, '--cfg-options', 'train_cfg.max_epochs=1']
                   + data_options(folder_data), env=device_env)
    assert 'AmpOptimWrapper' in log
    ckpt = torch.load(work / 'epoch_1.pth', weights_only=True)
    assert 'loss_scaler' in ckpt['optimizer']
    assert (work / 'epoch_1_merged.pth').is_file()
