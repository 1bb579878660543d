"""SPT: sensitivity, budgeted allocation, SPT-LoRA / SPT-Adapter in the method contract."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import BACKBONES, build_backbone, flatten_outputs, randomize_peft
from mmssf.peft import MergeError, apply_peft, get_peft, load_peft, save_peft
from mmssf.peft.spt import Allocation, allocate, compute_sensitivity, parse_budget, scored_parameters
from mmssf.peft.spt.sparse_delta import scatter_delta, sparse_linear_delta

TESTS = Path(__file__).parent


def random_scores(model, seed=0):
    """Heavy-tailed random sensitivities (a few entries dominate, as real ones do)."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen) ** 4 for n, p in scored_parameters(model).items()}


def tiny_classifier(num_classes=5):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='VisionTransformer', img_size=32, patch_size=8,
                      arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)),
        head=dict(type='VisionTransformerClsHead', num_classes=num_classes, in_channels=32),
        data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3, std=[64.] * 3)))
    model.init_weights()
    with torch.no_grad():  # the stock head starts at zero, which would zero every backbone gradient
        model.head.layers.head.weight.normal_(0, 0.5)
    return model


def classification_batches(sizes, seed=0):
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for size in sizes:
        inputs = [torch.randint(0, 256, (3, 32, 32), generator=gen, dtype=torch.uint8)
                  for _ in range(size)]
        samples = [DataSample().set_gt_label(int(torch.randint(0, 5, (1, ), generator=gen)))
                   for _ in range(size)]
        batches.append(dict(inputs=inputs, data_samples=samples))
    return batches


# -- acceptance 1: sensitivity ---------------------------------------------------------------
def test_sensitivity_equals_plain_autograd_loop():
    model = tiny_classifier()
    batches = classification_batches([3, 3, 3])
    scores, info = compute_sensitivity(model, model.backbone, batches, num_samples=7, progress=False)
    assert info == dict(samples=7, samples_asked=7, batches=3)

    # reference: a plain loop with torch.autograd.grad, the last batch cut to 1 sample
    model.eval()
    params = {n: p for n, p in model.backbone.named_parameters()
              if n not in ('cls_token', 'pos_embed') and not n.startswith('patch_embed.')}
    reference = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for batch, n in zip(batches, (3, 3, 1)):
        batch = {k: v[:n] for k, v in batch.items()}
        data = model.data_preprocessor(batch, True)
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (name, _), g in zip(params.items(), grads):
            if g is not None:
                reference[name] += g.double().square()

    assert set(scores) == set(params)  # head, cls token, pos embed and patch embed get no score
    assert not any(k.startswith('head') for k in scores)
    total = sum(float(r.abs().sum()) for r in reference.values())
    assert total > 0
    for name in params:
        err = (scores[name].double() - reference[name]).abs().max().item()
        assert err <= 1e-6 * max(reference[name].abs().max().item(), 1e-30), name
    # the pass leaves the model as it found it
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_fewer_samples_than_asked_is_an_explicit_fallback(monkeypatch):
    import mmssf.peft.spt.sensitivity as sensitivity
    logged = []
    monkeypatch.setattr(sensitivity, 'print_log', lambda msg, **kw: logged.append((msg, kw)))
    model = tiny_classifier()
    scores, info = compute_sensitivity(model, model.backbone, classification_batches([2, 2]),
                                       num_samples=800, progress=False)
    assert info['samples'] == 4 and info['samples_asked'] == 800
    assert 'only 4 samples' in info['note']
    assert len(logged) == 1 and 'only 4 samples' in logged[0][0]
    with pytest.raises(ValueError, match='no samples'):
        compute_sensitivity(model, model.backbone, [], num_samples=8, progress=False)


def test_backbones_that_refreeze_in_eval_are_still_scored():
    """mmdet's Swin re-freezes ``frozen_stages`` in every train() / eval() call: its frozen
    stages must still get gradients here, and its freezing is back afterwards."""
    backbone, size = build_backbone('mmdet_swin', frozen_stages=1)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return sum(o.square().mean() for o in self.backbone(x))

    model = Model()
    model.train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith('backbone.stages.0.') for n in frozen)
    batches = [dict(inputs=torch.randn(2, 3, *size))]
    scores, _ = compute_sensitivity(model, backbone, batches, num_samples=2, progress=False,
                                    loss_fn=lambda m, b: m(b['inputs']))
    stage0 = [k for k in scores if k.startswith('stages.0.') and k.endswith('qkv.weight')]
    assert stage0 and all(scores[k].abs().sum() > 0 for k in stage0)
    assert frozen == {n for n, p in model.named_parameters() if not p.requires_grad}


def test_sensitivity_is_deterministic():
    model = tiny_classifier()
    runs = [compute_sensitivity(model, model.backbone, classification_batches([4, 4]),
                                num_samples=8, progress=False)[0] for _ in range(2)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


# -- acceptance 2: the budget ----------------------------------------------------------------
@pytest.mark.parametrize('kind', ['lora', 'adapter'])
def test_allocation_meets_budget_and_follows_the_rule(kind, backbone_name):
    model, _ = build_backbone(backbone_name)
    scores = random_scores(model)
    budget = 3000
    alloc = allocate(scores, model, budget, kind=kind, rank=2, alpha=10)
    counted = sum(v['params'] for v in alloc.structured.values()) + \
        sum(v.numel() for v in alloc.unstructured.values())
    assert counted == alloc.budget['met']
    assert alloc.budget['asked'] == budget
    assert alloc.budget['within_1pct'] == (abs(counted - budget) <= 0.01 * budget)
    if not alloc.budget['within_1pct']:
        assert 'nearest achievable' in alloc.budget['note']
    # the structured rule, recomputed by brute force from the global top-t
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    top = torch.zeros(len(flat), dtype=torch.bool)
    top[torch.sort(flat, descending=True, stable=True).indices[:alloc.budget['top_t']]] = True
    start = 0
    for name, s in scores.items():
        c = int(top[start:start + s.numel()].sum())
        start += s.numel()
        owner, _, leaf = name.rpartition('.')
        if alloc.structured.get(owner, {}).get('param') == leaf:
            assert c >= alloc.structured[owner]['params'] / 10
            assert name not in alloc.unstructured
        elif name in alloc.unstructured:
            assert len(alloc.unstructured[name]) >= c  # top-t entries plus the budget fill
            idx = alloc.unstructured[name]
            assert torch.equal(idx, torch.unique(idx)) and int(idx.max()) < s.numel()
    # same scores -> same allocation
    again = allocate(scores, model, budget, kind=kind, rank=2, alpha=10)
    assert again.structured == alloc.structured
    assert all(torch.equal(again.unstructured[k], v) for k, v in alloc.unstructured.items())


@pytest.mark.parametrize('budget,rank', [(300, 1), (1000, 2), (2000, 4)])
def test_achievable_budgets_are_met_with_both_granularities(budget, rank):
    model, _ = build_backbone('mmpretrain_vit')
    alloc = allocate(random_scores(model, seed=3), model, budget, kind='lora', rank=rank)
    assert alloc.budget['met'] == budget and alloc.budget['within_1pct']
    assert alloc.structured and alloc.unstructured


def test_unachievable_budget_reports_the_nearest_value():
    """Every matrix already structured, every vector fully tuned: nothing is left to add."""
    model, _ = build_backbone('mmpretrain_vit')
    alloc = allocate(random_scores(model, seed=3), model, 5000, kind='lora', rank=1)
    vectors = sum(p.numel() for n, p in scored_parameters(model).items() if p.dim() == 1)
    assert alloc.budget['met'] == vectors + sum(v['params'] for v in alloc.structured.values())
    assert not alloc.budget['within_1pct'] and 'nearest achievable' in alloc.budget['note']


def test_ranking_a_prefix_gives_the_full_sort_allocation(monkeypatch):
    import mmssf.peft.spt.allocation as allocation
    flat = torch.randint(0, 50, (5000, )).float()  # many ties
    full = torch.sort(flat, descending=True, stable=True).indices
    prefix, complete = allocation.ranked_prefix(flat, 700)
    assert not complete and 0 < len(prefix) < 700 and torch.equal(prefix, full[:len(prefix)])
    model, _ = build_backbone('mmseg_swin')
    scores = {k: (v * 20).round() for k, v in random_scores(model).items()}
    expected = allocate(scores, model, 3000, rank=2)
    monkeypatch.setattr(allocation, 'MIN_PREFIX', 16)  # 4·τ = 12,000 of 57,000 scores, then grow
    got = allocate(scores, model, 3000, rank=2)
    assert got.budget == expected.budget and got.structured == expected.structured
    assert all(torch.equal(got.unstructured[k], v) for k, v in expected.unstructured.items())


def test_budget_parsing_and_bad_budgets():
    assert parse_budget('0.4M') == 400000 and parse_budget('400k') == 400000
    assert parse_budget(4e5) == 400000 and parse_budget('1,000') == 1000
    model, _ = build_backbone('mmpretrain_vit')
    scores = random_scores(model)
    for bad in (0, '0', -5, 'lots', 0.4, 'inf', float('nan')):
        with pytest.raises(ValueError, match='budget'):
            allocate(scores, model, bad)
    with pytest.raises(ValueError, match='alpha >= 1'):
        allocate(scores, model, 1000, alpha=0.5)
    total = sum(s.numel() for s in scores.values())
    with pytest.raises(ValueError, match='not smaller than the .* parameters SPT can tune'):
        allocate(scores, model, total + 1)


# -- files and the method contract ------------------------------------------------------------
def _saved_allocation(tmp_path, backbone_name, kind='lora', budget=3000):
    model, _ = build_backbone(backbone_name)
    alloc = allocate(random_scores(model), model, budget, kind=kind, rank=2)
    return alloc.save(str(tmp_path / f'{backbone_name}_{kind}'))


def test_allocation_file_round_trip(tmp_path):
    path = _saved_allocation(tmp_path, 'mmseg_swin')
    info = json.loads(Path(path).read_text())
    assert info['budget']['asked'] == 3000 and info['kind'] == 'lora'
    loaded = Allocation.load(path)
    model, _ = build_backbone('mmseg_swin')
    again = allocate(random_scores(model), model, 3000, kind='lora', rank=2)
    assert loaded.structured == again.structured
    assert all(torch.equal(loaded.unstructured[k], v) for k, v in again.unstructured.items())
    # the index file is plain tensors
    torch.load(Path(path).parent / info['indices'], weights_only=True)


@pytest.mark.parametrize('method', ['SPTLoRA', 'SPTAdapter'])
def test_freezing_training_and_peft_round_trip(tmp_path, method, backbone_name):
    kind = 'lora' if method == 'SPTLoRA' else 'adapter'
    path = _saved_allocation(tmp_path, backbone_name, kind)
    model, size = build_backbone(backbone_name)
    apply_peft(model, dict(type=method, allocation=path))
    spt = get_peft(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(spt.trainable_names(model))
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) == \
        spt.allocation.budget['met']
    assert any('spt_delta' in n for n in trainable)
    # gradients reach exactly the PEFT tensors; deltas get O(K) gradients
    x = torch.randn(2, 3, *size)
    sum(o.square().mean() for o in flatten_outputs(model(x))).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    for name, p in model.named_parameters():
        if 'spt_delta' in name:
            assert p.grad.shape == p.shape and p.grad.abs().sum() > 0, name
    randomize_peft(model)
    with torch.no_grad():
        expected = flatten_outputs(model(x))
    save_peft(str(tmp_path / 'peft.pth'), model)
    saved = torch.load(tmp_path / 'peft.pth', weights_only=True)['state_dict']
    assert any('spt_index' in k for k in saved)  # the indices travel with the PEFT state
    assert set(saved) == set(spt.trainable_names(model)) | set(spt.buffer_names())

    fresh, _ = build_backbone(backbone_name)
    apply_peft(fresh, dict(type=method, allocation=path))
    load_peft(str(tmp_path / 'peft.pth'), fresh)
    with torch.no_grad():
        got = flatten_outputs(fresh(x))
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


# -- acceptance 3: merge --------------------------------------------------------------------
def _merged_spt_lora(tmp_path, backbone_name):
    """(tuned outputs, merged backbone, input) for a randomized SPT-LoRA backbone."""
    path = _saved_allocation(tmp_path, backbone_name)
    model, size = build_backbone(backbone_name)
    apply_peft(model, dict(type='SPTLoRA', allocation=path))
    spt = get_peft(model)
    assert spt.allocation.structured and spt.allocation.unstructured  # both kinds are exercised
    randomize_peft(model)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        tuned = flatten_outputs(model(x))
        spt.merge(model)
    return tuned, model, x


def test_spt_lora_merged_loads_without_mmssf(tmp_path):
    """One process that never imports mmssf loads all five merged backbones with strict=True."""
    for name in sorted(BACKBONES):
        tuned, model, x = _merged_spt_lora(tmp_path, name)
        torch.save({'state_dict': model.state_dict(), 'x': x, 'expected': tuned},
                   tmp_path / f'{name}.pth')
    script = textwrap.dedent(f'''
        import sys, torch
        sys.path.insert(0, {str(TESTS)!r})
        from conftest import BACKBONES, build_backbone, flatten_outputs
        for name in sorted(BACKBONES):
            model, _ = build_backbone(name, seed=7)
            ckpt = torch.load({str(tmp_path)!r} + f'/{{name}}.pth', weights_only=True)
            model.load_state_dict(ckpt['state_dict'], strict=True)
            with torch.no_grad():
                outs = flatten_outputs(model(ckpt['x']))
            print(name, max((a - b).abs().max().item() for a, b in zip(outs, ckpt['expected'])))
        assert 'mmssf' not in sys.modules
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    diffs = {r[0]: r[1] for r in rows if len(r) == 2 and r[0] in BACKBONES}
    assert sorted(diffs) == sorted(BACKBONES)
    assert all(float(d) <= 1e-5 for d in diffs.values()), diffs


# -- acceptance 4: O(K) backward ---------------------------------------------------------------
def _dense_path(weight, x, index, delta):
    return torch.nn.functional.linear(x, scatter_delta(weight, index, delta))


def _linear_path(weight, x, index, delta):
    return sparse_linear_delta(torch.nn.functional.linear(x, weight), x, delta, index,
                               weight.shape[1])


def test_sparse_linear_delta_is_exact():
    torch.manual_seed(0)
    weight = torch.randn(6, 5, dtype=torch.double)
    x = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True)
    index = torch.tensor([0, 4, 7, 13, 29])
    delta = torch.randn(5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, d: _linear_path(weight, x, index, d), (x, delta))
    assert torch.allclose(_linear_path(weight, x, index, delta), _dense_path(weight, x, index, delta))


def test_sparse_deltas_train_under_autocast(tmp_path):
    """Mixed precision: the Linear runs in bfloat16, its input and the deltas stay float32."""
    path = _saved_allocation(tmp_path, 'mmpretrain_vit')
    model, size = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='SPTLoRA', allocation=path))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = flatten_outputs(model(torch.randn(2, 3, *size)))
    sum(o.float().square().mean() for o in outs).backward()
    deltas = [p for n, p in model.named_parameters() if 'spt_delta' in n]
    assert deltas and all(p.grad is not None and p.grad.dtype == torch.float32 for p in deltas)
    # the op itself with a float32 input and a bfloat16 Linear output (what autocast produces)
    x = torch.randn(4, 8, requires_grad=True)
    delta = torch.randn(3, requires_grad=True)
    out = torch.nn.functional.linear(x, torch.randn(5, 8)).bfloat16()
    y = sparse_linear_delta(out, x, delta, torch.tensor([1, 9, 30]), 8)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and delta.grad.dtype == torch.float32


def _backward_peak_bytes(path, weight, x, k):
    from torch.profiler import ProfilerActivity, profile
    index = torch.randperm(weight.numel(), generator=torch.Generator().manual_seed(0))[:k]
    delta = torch.zeros(k, requires_grad=True)
    loss = path(weight, x, index.sort().values, delta).square().sum()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.cpu_memory_usage
        peak = max(peak, current)
    assert delta.grad.shape == (k, )
    return peak


@pytest.mark.parametrize('path', [_dense_path, _linear_path])
def test_sparse_delta_backward_memory_is_linear_in_k(path):
    weight, x = torch.randn(1024, 1024), torch.randn(16, 1024, requires_grad=True)
    k = 100_000
    peak_k, peak_4k = (_backward_peak_bytes(path, weight, x, n) for n in (k, 4 * k))
    dense, tokens = weight.numel() * 4, x.shape[0]
    # at most one dense gradient of the effective weight + a few (tokens x K) gathers; a K x K
    # matrix would be 640 GB
    assert peak_4k <= 4 * peak_k + 2 * dense
    assert peak_4k <= 3 * dense + 8 * tokens * 4 * k * 4


# -- acceptance 6: bad inputs ------------------------------------------------------------------
def test_allocation_for_another_backbone_is_refused(tmp_path):
    path = _saved_allocation(tmp_path, 'mmpretrain_vit')
    other, _ = build_backbone('mmseg_vit')
    with pytest.raises(ValueError, match='made for a mmpretrain VisionTransformer.*mmseg'):
        apply_peft(other, dict(type='SPTLoRA', allocation=path))
    from mmpretrain.models.backbones import VisionTransformer
    deeper = VisionTransformer(arch=dict(embed_dims=32, num_layers=3, num_heads=2,
                                         feedforward_channels=64), img_size=64, patch_size=16)
    with pytest.raises(ValueError, match='another mmpretrain VisionTransformer architecture.*layers.2'):
        apply_peft(deeper, dict(type='SPTLoRA', allocation=path))
    assert get_peft(deeper) is None


def test_wrong_kind_missing_file_and_targets_are_refused(tmp_path):
    path = _saved_allocation(tmp_path, 'mmdet_swin', kind='lora')
    with pytest.raises(ValueError, match="SPTAdapter needs a 'adapter' allocation"):
        apply_peft(build_backbone('mmdet_swin')[0], dict(type='SPTAdapter', allocation=path))
    with pytest.raises(FileNotFoundError, match='spt_sensitivity.py'):
        apply_peft(build_backbone('mmdet_swin')[0],
                   dict(type='SPTLoRA', allocation=str(tmp_path / 'nope' / 'allocation.json')))
    with pytest.raises(ValueError, match='takes no targets'):
        apply_peft(build_backbone('mmdet_swin')[0],
                   dict(type='SPTLoRA', allocation=path, targets=['qkv']))
