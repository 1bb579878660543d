"""``torch.compile`` (inductor, CPU) of tuned backbones: every method's mechanisms — forward hooks
(SSF, LoRA, Adapter, VPT-deep prompts), weight transforms (RLRR, DoRA, SNELL, SSF folded into
norms), custom autograd ops (SSF's scale-shift, SPT's sparse deltas) and VPT's replaced window
attention — compile, and the compiled backbone equals eager within float tolerance, outputs and
gradients of every trainable tensor.

Compiling is slow on CPU (dynamo tracing the hooks: ~10 s a case on 2 cores; inductor's C++
codegen: 30-120 s). The default tier traces the two cases that cover every mechanism with the
``aot_eager`` backend (dynamo + AOTAutograd: the graph capture, the custom autograd ops and the
backward, without codegen), and two in training mode whose random draws (SPT-LoRA's dropout
shared by q / k / v through Python state across hooks, drop-path) must equal eager's under the same
seed; the slow tier compiles one with inductor; the per-method inductor
sweep on three backbones (~1 h) is in the long tier. ``benchmarks/peft_cost.py --compile`` runs
inductor per method on ViT-B/16 (outputs and gradients checked there too; table in
``benchmarks/README.md``). The gradients come from :func:`probe_loss`, which the output
LayerNorms cannot make constant.
"""
import pytest
import torch

from conftest import build_backbone, flatten_outputs, randomize_peft
from method_matrix import ROUND_TRIP_CASES
from mmssf.peft import apply_peft
from mmssf.peft.registry_facts import method_classes

METHODS = [cls.__name__ for cls in method_classes()]
BACKBONES = ('mmpretrain_vit', 'mmpretrain_swin', 'mmdet_swin')
# every mechanism once: forward hooks, SSF's autograd op and its norm weight transforms (SSF on
# ViT); hooks around blocks and the replaced window attention (VPT-deep on Swin)
REPRESENTATIVE = [('SSF', 'mmpretrain_vit'), ('VPTDeep', 'mmpretrain_swin')]
OUT_TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_RTOL = 1e-3  # of the tensor's largest eager gradient
#: of the model's largest eager gradient, for tensors whose exact gradient is 0 by cancellation:
#: eager and compiled keep different rounding residue there (the key bias of SPT-Adapter's qkv
#: adapter, a shift of every key, which softmax ignores: 1e-9 residue against gradients of 1e-2)
GRAD_FLOOR = 1e-6


def probe_loss(outs):
    """``Σ mean((o ⊙ w)²)`` with fixed random weights ``w`` per output element. (Not ``mean(o²)``:
    every backbone here ends its outputs with a LayerNorm whose affine is stock 1 / 0, so
    ``mean(o²)`` is ≈ 1 per token whatever the input; its gradients are ~1e-8 rounding residue
    (measured: 6e-8 on the last ViT layer's adapter, ≤ 7e-5 everywhere on Swin), and comparing
    compiled with eager gradients compared rounding noise.)"""
    gen = torch.Generator().manual_seed(1)
    return sum((o * torch.randn(o.shape, generator=gen)).square().mean() for o in outs)


def eager_and_compiled(method, backbone_name, tmp_path, backend='inductor', train=False):
    """(eager (outputs, grads), compiled (outputs, grads)) of a randomised tuned backbone, in eval
    mode (no drop-path draws to match), or in training mode with the same seed before each run
    (``train``: a backend that keeps eager's random draws, e.g. ``aot_eager``)."""
    import torch._dynamo
    backbone, size = build_backbone(backbone_name)
    apply_peft(backbone, ROUND_TRIP_CASES[method][0](backbone, tmp_path))
    randomize_peft(backbone)
    backbone.train(train)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    # (a linear probe trains only the head, which is outside the backbone: outputs only)
    assert trainable or method == 'LinearProbe', f'{method}: nothing trainable'

    def run(net):
        torch.manual_seed(0)
        outs = flatten_outputs(net(x))
        if trainable:
            probe_loss(outs).backward()
        grads = {n: p.grad.clone() for n, p in trainable.items()}
        backbone.zero_grad(set_to_none=True)
        return [o.detach() for o in outs], grads

    eager = run(backbone)
    torch._dynamo.reset()
    compiled = run(torch.compile(backbone, backend=backend))
    torch._dynamo.reset()
    return eager, compiled


def check_equal(method, eager, compiled):
    (outs_e, grads_e), (outs_c, grads_c) = eager, compiled
    assert len(outs_e) == len(outs_c) > 0
    for e, c in zip(outs_e, outs_c):
        torch.testing.assert_close(c, e, **OUT_TOL, msg=lambda m: f'{method} outputs: {m}')
    assert grads_e.keys() == grads_c.keys()
    scale = max((e.abs().max().item() for e in grads_e.values()), default=0.0)
    for name, e in grads_e.items():
        err = (grads_c[name] - e).abs().max().item()
        tol = max(GRAD_RTOL * e.abs().max().item(), GRAD_FLOOR * scale)
        assert err <= tol, (method, name, err, tol)


@pytest.mark.parametrize('method,backbone_name', REPRESENTATIVE)
def test_traced_equals_eager_for_each_mechanism(tmp_path, method, backbone_name):
    check_equal(method, *eager_and_compiled(method, backbone_name, tmp_path, 'aot_eager'))


# training-time randomness under dynamo: SPT-LoRA's q / k / v LoRAs share one dropout draw through
# Python state kept across three hooks (SharedDropout), plus drop-path on every structured module
# (official defaults 0.1 / 0.1); Adapter+'s drop-path on Swin
@pytest.mark.parametrize('method,backbone_name', [('SPTLoRA', 'mmpretrain_vit'),
                                                  ('AdapterPlus', 'mmpretrain_swin')])
def test_traced_training_draws_equal_eager(tmp_path, method, backbone_name):
    check_equal(method, *eager_and_compiled(method, backbone_name, tmp_path, 'aot_eager',
                                            train=True))


@pytest.mark.slow  # one inductor compilation (~90 s on 2 cores)
def test_inductor_compiled_ssf_equals_eager(tmp_path):
    check_equal('SSF', *eager_and_compiled('SSF', 'mmpretrain_vit', tmp_path, 'inductor'))


@pytest.mark.long  # every method on three backbones: ~40 inductor compilations
@pytest.mark.parametrize('backbone_name', BACKBONES)
@pytest.mark.parametrize('method', METHODS)
def test_every_method_compiles_and_equals_eager(tmp_path, method, backbone_name):
    assert method in ROUND_TRIP_CASES, f'{method}: no row in tests/method_matrix.py'
    check_equal(method, *eager_and_compiled(method, backbone_name, tmp_path, 'inductor'))
