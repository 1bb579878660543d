"""SPT: sensitivity, budgeted allocation, SPT-LoRA / SPT-Adapter in the method contract. The
sensitivity pass, training / round trip and autocast tests run on ``pytest --device``."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

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
def test_sensitivity_equals_plain_autograd_loop(device):
    model = tiny_classifier().to(device)
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
        err = (scores[name].double().to(device) - reference[name]).abs().max().item()
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
def reference_candidates(model, scores, kind, rank, alpha, beta):
    """The official rule's candidates, written from ziplab/SPT ``engine.get_sensitivity``: every
    matrix and vector is one, except that a fused q/k/v weight / bias is three (the official ViT
    has separate q, k, v Linears). ``(name, param, lo, hi, cost, sigma)`` with ``[lo, hi)`` the
    flat range inside the parameter; sigma = inf where nothing structured applies."""
    from mmssf.peft.targets import find_table
    table = find_table(model)
    modules = dict(model.named_modules())
    out = []
    for name, s in scores.items():
        owner, _, leaf = name.rpartition('.')
        module = modules.get(owner)
        mha = isinstance(module, torch.nn.MultiheadAttention)
        fused = table.role_of(owner) == 'qkv' and leaf in ('weight', 'bias', 'in_proj_weight',
                                                           'in_proj_bias')
        blocks = 3 if fused else 1
        matrix = (isinstance(module, torch.nn.Linear) and leaf == 'weight') or \
            (mha and leaf == 'in_proj_weight')
        if kind == 'adapter' and (mha or isinstance(modules.get(owner.rpartition('.')[0]),
                                                   torch.nn.MultiheadAttention)):
            matrix = False  # no hook sees the fused attention's outputs
        size = s.numel() // blocks
        for b in range(blocks):
            key = (owner if matrix else name) + (':' + 'qkv'[b] if fused else '')
            if matrix:
                fan_out, fan_in = s.shape[0] // blocks, s.shape[1]
                cost = rank * (fan_in + fan_out) if kind == 'lora' else \
                    2 * fan_out * rank + rank + fan_out
                sigma = cost / alpha
            elif s.dim() == 1 and beta:
                cost, sigma = size, size / beta
            else:
                cost, sigma = 0, float('inf')
            out.append((key, name, b * size, (b + 1) * size, cost, sigma))
    return out


def check_rule_by_brute_force(model, scores, alloc, kind, rank, alpha, beta):
    """Recompute the allocation rule from the global top-t (full sort) and compare."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    top = torch.zeros(len(flat), dtype=torch.bool)
    top[torch.sort(flat, descending=True, stable=True).indices[:alloc.budget['top_t']]] = True
    starts = dict(zip(names, torch.cumsum(torch.tensor([0] + [scores[n].numel() for n in names]),
                                          0).tolist()))
    structured = vectors = unstructured = 0
    for key, param, lo, hi, cost, sigma in reference_candidates(model, scores, kind, rank, alpha,
                                                                beta):
        c = int(top[starts[param] + lo:starts[param] + hi].sum())
        idx = alloc.unstructured.get(param, torch.zeros(0, dtype=torch.long))
        mine = idx[(idx >= lo) & (idx < hi)]
        if c >= sigma:  # tuned structurally / whole, and nothing of it entry-wise
            table = alloc.structured if key in alloc.structured else alloc.vectors
            assert key in table, (key, c, sigma)
            assert table[key]['params'] == cost and table[key]['sensitive'] == c, key
            assert len(mine) == 0, key
            structured += cost * (table is alloc.structured)
            vectors += cost * (table is alloc.vectors)
        else:
            assert key not in alloc.structured and key not in alloc.vectors, (key, c, sigma)
            # the top-t entries plus the budget fill, which never reaches the threshold
            top_here = torch.nonzero(top[starts[param] + lo:starts[param] + hi]).reshape(-1) + lo
            assert set(top_here.tolist()) <= set(mine.tolist()), key
            assert len(mine) < sigma, key
            unstructured += len(mine)
    cls = alloc.budget['cls_token']
    assert structured + vectors + unstructured + cls == alloc.budget['met']
    assert (structured, vectors, unstructured) == (
        alloc.budget['structured'], alloc.budget['vectors'], alloc.budget['unstructured'])
    for param, idx in alloc.unstructured.items():
        assert torch.equal(idx, torch.unique(idx)) and int(idx.max()) < scores[param].numel()


@pytest.mark.parametrize('kind', ['lora', 'adapter'])
def test_allocation_meets_budget_and_follows_the_rule(kind, backbone_name):
    model, _ = build_backbone(backbone_name)
    scores = random_scores(model)
    budget = 3000
    alloc = allocate(scores, model, budget, kind=kind, rank=2, alpha=10)
    assert alloc.budget['asked'] == budget
    assert alloc.budget['within_1pct'] == (abs(alloc.budget['met'] - budget) <= 0.01 * budget)
    if not alloc.budget['within_1pct']:
        assert 'nearest achievable' in alloc.budget['note']
    check_rule_by_brute_force(model, scores, alloc, kind, 2, 10, 5)
    # same scores -> same allocation
    again = allocate(scores, model, budget, kind=kind, rank=2, alpha=10)
    assert again.structured == alloc.structured and again.vectors == alloc.vectors
    assert all(torch.equal(again.unstructured[k], v) for k, v in alloc.unstructured.items())


QKV = {'mmpretrain_vit': 'layers.{}.attn.qkv', 'mmseg_vit': 'layers.{}.attn.attn',
       'timm_vit': 'blocks.{}.attn.qkv',
       'mmpretrain_swin': 'stages.0.blocks.{}.attn.w_msa.qkv',
       'mmdet_swin': 'stages.0.blocks.{}.attn.w_msa.qkv',
       'mmseg_swin': 'stages.0.blocks.{}.attn.w_msa.qkv'}
NORM = {'mmpretrain_vit': 'layers.{}.ln1', 'mmseg_vit': 'layers.{}.ln1',
        'timm_vit': 'blocks.{}.norm1',
        'mmpretrain_swin': 'stages.0.blocks.{}.norm1', 'mmdet_swin': 'stages.0.blocks.{}.norm1',
        'mmseg_swin': 'stages.0.blocks.{}.norm1'}


def qkv_scores(model, backbone_name, seed=0):
    """Tiny noise everywhere; hot: the q rows of block 0's qkv weight, the v rows of block 1's,
    7 entries (>= 32 / 5) of block 0's norm1 weight and of the k part of block 0's qkv bias,
    6 entries (< 32 / 5) of block 1's norm1 weight."""
    gen = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=gen) * 1e-3 for n, p in scored_parameters(model).items()}
    qkv0, qkv1 = (QKV[backbone_name].format(i) for i in (0, 1))
    w, b = ('in_proj_weight', 'in_proj_bias') if backbone_name == 'mmseg_vit' else ('weight', 'bias')
    dim = scores[f'{qkv0}.{w}'].shape[1]
    scores[f'{qkv0}.{w}'][:dim] += 1 + torch.rand(dim, dim, generator=gen)
    scores[f'{qkv1}.{w}'][2 * dim:] += 1 + torch.rand(dim, dim, generator=gen)
    scores[f'{qkv0}.{b}'][dim + 3:dim + 10] += 5
    scores[NORM[backbone_name].format(0) + '.weight'][:7] += 5
    scores[NORM[backbone_name].format(1) + '.weight'][:6] += 5
    return scores, qkv0, qkv1, w, b, dim


def test_q_k_v_blocks_are_separate_candidates_and_vectors_follow_beta(tmp_path, backbone_name):
    model, size = build_backbone(backbone_name)
    scores, qkv0, qkv1, w, b, dim = qkv_scores(model, backbone_name)
    rank = 2
    alloc = allocate(scores, model, 360, kind='lora', rank=rank, alpha=10)
    check_rule_by_brute_force(model, scores, alloc, 'lora', rank, 10, 5)
    block_cost = rank * (dim + dim)  # r·(in + out/3): a LoRA on one of q, k, v
    assert alloc.structured == {
        f'{qkv0}:q': dict(param=w, params=block_cost, sensitive=dim * dim, rows=[0, dim]),
        f'{qkv1}:v': dict(param=w, params=block_cost, sensitive=dim * dim, rows=[2 * dim, 3 * dim])}
    norm0, norm1 = (NORM[backbone_name].format(i) + '.weight' for i in (0, 1))
    assert alloc.vectors[f'{qkv0}.{b}:k'] == dict(params=dim, sensitive=7, rows=[dim, 2 * dim])
    assert alloc.vectors[norm0] == dict(params=dim, sensitive=7)
    assert norm1 not in alloc.vectors and alloc.unstructured[norm1].tolist() == list(range(6))
    assert alloc.budget['met'] == 360

    # the method: a LoRA whose B covers only the q (v) rows; the vectors train every entry
    path = alloc.save(str(tmp_path / 'alloc'))
    apply_peft(model, dict(type='SPTLoRA', allocation=path))
    spt = get_peft(model)
    modules = dict(model.named_modules())
    assert modules[qkv0].lora_B_block0.shape == (dim, rank)
    assert modules[qkv1].lora_B_block2.shape == (dim, rank)
    assert set(range(dim, 2 * dim)) <= set(getattr(modules[qkv0], f'spt_index_{b}').tolist())
    assert spt.num_trainable(model) == alloc.budget['met']
    randomize_peft(model)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        tuned = flatten_outputs(model(x))
        spt.merge(model)
        merged = flatten_outputs(model(x))
    assert max((t - m).abs().max().item() for t, m in zip(tuned, merged)) <= 1e-5


@pytest.mark.parametrize('budget,rank', [(300, 1), (1200, 2), (2000, 4)])
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
    assert alloc.budget['met'] == vectors + sum(v['params'] for v in alloc.structured.values()) \
        + model.cls_token.numel()
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
    with pytest.raises(ValueError, match='beta >= 1'):
        allocate(scores, model, 1000, beta=0.5)
    total = sum(s.numel() for s in scores.values()) + model.cls_token.numel()
    with pytest.raises(ValueError, match='not smaller than the .* parameters SPT can tune'):
        allocate(scores, model, total)
    with pytest.raises(ValueError, match='nothing beside the class token'):
        allocate(scores, model, model.cls_token.numel())
    assert allocate(scores, model, 20, train_cls_token=False).budget['met'] == 20


# -- files and the method contract ------------------------------------------------------------
def _saved_allocation(tmp_path, backbone_name, kind='lora', budget=2000):
    model, _ = build_backbone(backbone_name)
    alloc = allocate(random_scores(model), model, budget, kind=kind, rank=2)
    return alloc.save(str(tmp_path / f'{backbone_name}_{kind}'))


def test_allocation_file_round_trip(tmp_path):
    path = _saved_allocation(tmp_path, 'mmseg_swin')
    info = json.loads(Path(path).read_text())
    assert info['budget']['asked'] == 2000 and info['kind'] == 'lora'
    loaded = Allocation.load(path)
    model, _ = build_backbone('mmseg_swin')
    again = allocate(random_scores(model), model, 2000, kind='lora', rank=2)
    assert loaded.structured == again.structured
    assert all(torch.equal(loaded.unstructured[k], v) for k, v in again.unstructured.items())
    # the index file is plain tensors
    torch.load(Path(path).parent / info['indices'], weights_only=True)


@pytest.mark.parametrize('method', ['SPTLoRA', 'SPTAdapter'])
def test_freezing_training_and_peft_round_trip(tmp_path, method, backbone_name, device):
    kind = 'lora' if method == 'SPTLoRA' else 'adapter'
    path = _saved_allocation(tmp_path, backbone_name, kind)
    model, size = build_backbone(backbone_name)
    apply_peft(model, dict(type=method, allocation=path))
    model.to(device)
    spt = get_peft(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(spt.trainable_names(model))
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) == \
        spt.allocation.budget['met']
    assert any('spt_delta' in n for n in trainable)
    # gradients reach exactly the PEFT tensors; deltas get O(K) gradients
    x = torch.randn(2, 3, *size).to(device)
    sum(o.square().mean() for o in flatten_outputs(model(x))).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    for name, p in model.named_parameters():
        if 'spt_delta' in name:
            assert p.grad.shape == p.shape and p.grad.abs().sum() > 0, name
    model.cpu()  # (randomize_peft draws on the CPU)
    randomize_peft(model)
    model.to(device)
    with torch.no_grad():
        expected = flatten_outputs(model(x))
    save_peft(model, str(tmp_path / 'peft.pth'))
    saved = torch.load(tmp_path / 'peft.pth', weights_only=True)['state_dict']
    assert any('spt_index' in k for k in saved)  # the indices travel with the PEFT state
    assert set(saved) == set(spt.trainable_names(model)) | set(spt.buffer_names())

    fresh, _ = build_backbone(backbone_name)
    apply_peft(fresh, dict(type=method, allocation=path))
    load_peft(fresh, str(tmp_path / 'peft.pth'))
    fresh.to(device)
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


def test_sparse_deltas_train_under_autocast(tmp_path, device):
    """Mixed precision: the Linear runs in bfloat16, its input and the deltas stay float32."""
    path = _saved_allocation(tmp_path, 'mmpretrain_vit')
    model, size = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='SPTLoRA', allocation=path))
    model.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        outs = flatten_outputs(model(torch.randn(2, 3, *size).to(device)))
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


# -- q / k / v blocks, vectors, class token, regularisation ----------------------------------
def test_block_lora_cost_on_vit_b_is_the_official_one():
    """ViT-B: a LoRA-8 on one of q, k, v costs 8·(768 + 768) = 12,288 (σ = 1,228.8 at α = 10),
    as on the official separate q / k / v Linears."""
    from mmssf.peft.spt.allocation import structured_cost
    qkv = torch.nn.Linear(768, 3 * 768)
    assert structured_cost(qkv, 'lora', 8, row_blocks=3) == 12_288
    assert structured_cost(qkv, 'lora', 8) == 8 * (768 + 3 * 768)
    assert structured_cost(qkv, 'adapter', 8, row_blocks=3) == 2 * 768 * 8 + 8 + 768


@pytest.mark.parametrize('block', [0, 1, 2])
def test_block_lora_equals_a_lora_on_a_separate_linear(block):
    """LoRA on rows [b·D, (b+1)·D) of a fused qkv == the fused Linear with the b-th of three
    separate Linears replaced by ``W_b x + b_b + s·B A x``; merges exactly."""
    model, _ = build_backbone('mmpretrain_vit')
    qkv = model.layers[0].attn.qkv
    weight, bias = qkv.weight.detach().clone(), qkv.bias.detach().clone()
    apply_peft(model, dict(type='LoRA', r=3, alpha=6.0, row_block=block, row_blocks=3))
    randomize_peft(model, std=0.3)
    dim = qkv.in_features
    a, b = getattr(qkv, f'lora_A_block{block}'), getattr(qkv, f'lora_B_block{block}')
    assert b.shape == (dim, 3) and a.shape == (3, dim)
    x = torch.randn(2, 5, dim)
    separate = [torch.nn.functional.linear(x, weight[i * dim:(i + 1) * dim],
                                           bias[i * dim:(i + 1) * dim]) for i in range(3)]
    separate[block] = separate[block] + 2.0 * (x @ a.T @ b.T)
    reference = torch.cat(separate, -1)
    with torch.no_grad():
        assert (qkv(x) - reference).abs().max().item() <= 1e-5
        get_peft(model).merge(model)
        assert (qkv(x) - reference).abs().max().item() <= 1e-5
        untouched = [i for i in range(3) if i != block]
        for i in untouched:
            assert torch.equal(qkv.weight[i * dim:(i + 1) * dim], weight[i * dim:(i + 1) * dim])


def test_lora_drop_path_is_per_sample_in_training_and_identity_in_eval():
    model, _ = build_backbone('mmpretrain_vit')
    fc1 = model.layers[0].ffn.layers[0][0]
    apply_peft(model, dict(type='LoRA', targets=['fc1'], r=2, drop_path=0.5))
    randomize_peft(model, std=0.5)
    x = torch.randn(64, 3, fc1.in_features)
    with torch.no_grad():
        base = torch.nn.functional.linear(x, fc1.weight, fc1.bias)
        delta = (x @ fc1.lora_A.T @ fc1.lora_B.T)
        fc1.eval()
        assert torch.allclose(fc1(x) - base, delta, atol=1e-6)  # eval: identity drop-path
        fc1.train()
        got = fc1(x) - base
    kept = [torch.allclose(g, 2 * d, atol=1e-5) for g, d in zip(got, delta)]
    dropped = [bool(g.abs().max() <= 1e-6) for g in got]
    assert all(k != d for k, d in zip(kept, dropped))  # each sample: all of 2·delta, or none
    assert 10 < sum(kept) < 54


def test_spt_regularisation_follows_the_official_code(tmp_path, monkeypatch):
    """dropout on every LoRA input but the attention projection's; drop-path on every LoRA;
    where no hook sees the input (mmseg's fused attention), neither, with a warning."""
    import mmssf.peft.spt.method as method
    logged = []
    monkeypatch.setattr(method, 'print_log', lambda msg, **kw: logged.append(msg))
    for name in ('mmpretrain_vit', 'mmseg_vit'):
        model, _ = build_backbone(name)
        # every matrix (block) structured: matrices score 1, vectors far less; τ = their LoRAs
        # (q, k, v, proj 1·(32 + 32), fc1 / fc2 1·(32 + 64), two layers) + the class token
        scores = {k: torch.ones_like(v) if v.dim() == 2 else torch.rand(v.shape) * 1e-3
                  for k, v in random_scores(model).items()}
        alloc = allocate(scores, model, 2 * (4 * 64 + 2 * 96) + 32, rank=1)
        assert len(alloc.structured) == 12 and not alloc.unstructured
        cfg = dict(type='SPTLoRA', allocation=alloc.save(str(tmp_path / name)), dropout=0.1,
                   drop_path=0.1)
        spt = apply_peft(model, cfg)
        loras = [u for u in spt.units if hasattr(u, 'lora_A')]
        roles = {u.role for u in loras}
        assert {'qkv', 'proj', 'fc1', 'fc2'} <= roles
        for unit in loras:
            if unit.reparam:
                assert (unit.dropout, unit.drop_path) == (0, 0)
            else:
                assert unit.drop_path == 0.1
                assert unit.dropout == (0 if unit.role == 'proj' else 0.1), unit.name
        reparam = [u.name for u in loras if u.reparam]
        assert bool(reparam) == (name == 'mmseg_vit')
    assert len(logged) == 1 and 'layers.0.attn.attn:q' in logged[0]
    with pytest.raises(ValueError, match='row_block are fixed by the allocation'):
        apply_peft(build_backbone('mmpretrain_vit')[0],
                   dict(type='SPTLoRA', allocation=cfg['allocation'], row_block=0))


@pytest.mark.parametrize('backbone_name', ['mmpretrain_vit', 'mmseg_vit', 'mmdet_swin'])
def test_cls_token_is_trained_and_counted(tmp_path, backbone_name):
    model, _ = build_backbone(backbone_name)
    scores = random_scores(model)
    alloc = allocate(scores, model, 2000, rank=2)
    vit = backbone_name.endswith('vit')
    assert alloc.budget['cls_token'] == (32 if vit else 0)
    assert alloc.cls_token == (dict(param='cls_token', params=32) if vit else None)
    spt = apply_peft(model, dict(type='SPTLoRA', allocation=alloc.save(str(tmp_path / 'a'))))
    assert spt.num_trainable(model) == alloc.budget['met'] == 2000
    if vit:
        assert model.cls_token.requires_grad and 'cls_token' in spt.no_weight_decay()
        assert 'cls_token' in spt.peft_state_dict(model)
        fresh, _ = build_backbone(backbone_name)
        frozen = allocate(scores, fresh, 2000, rank=2, train_cls_token=False)
        assert frozen.cls_token is None and frozen.budget['cls_token'] == 0
        spt = apply_peft(fresh, dict(type='SPTLoRA', allocation=frozen.save(str(tmp_path / 'b'))))
        assert not fresh.cls_token.requires_grad and spt.num_trainable(fresh) == 2000


def test_old_allocation_format_is_refused_with_the_command(tmp_path):
    path = _saved_allocation(tmp_path, 'mmpretrain_vit')
    info = json.loads(Path(path).read_text())
    info['version'] = 1
    Path(path).write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r'format 1.*Recompute it: .*spt_sensitivity.py CONFIG '
                                         r'--budget 2000'):
        Allocation.load(path)


# -- what the sensitivity pass is fed ----------------------------------------------------------
SCORING_CONFIG = '''
_base_ = {base!r}
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
model = dict(
    backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                  peft=dict(type='SPTLoRA', allocation={alloc!r})),
    head=dict(loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')),
    train_cfg=dict(_delete_=True,
                   augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5, hparams=dict(pad_val=[104, 116, 124])),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='CenterCrop', crop_size=48),
                 dict(type='PackInputs')]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
'''


def _tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'spt_sensitivity', TESTS.parent / 'tools' / 'analysis_tools' / 'spt_sensitivity.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sensitivity_scores_training_images_through_the_test_pipeline(tmp_path, monkeypatch):
    """A config that trains with RandomResizedCrop + RandAugment, Mixup / CutMix and label
    smoothing: the scorer sees the training images through the test pipeline (48 px centre
    crops), hard labels, no batch augmentation and plain cross entropy; RandAugment never runs."""
    from mmengine.config import Config
    from mmpretrain.datasets.transforms import RandAugment
    from mmpretrain.models.utils.batch_augments import CutMix, Mixup
    from mmpretrain.registry import DATASETS, MODELS

    from mmssf.datasets.image_folder import make_image_folder
    from runner_utils import CONFIGS, data_options
    root = make_image_folder(str(tmp_path / 'data'), per_class=2) + '/'
    cfg_path = tmp_path / 'spt_scoring.py'
    cfg_path.write_text(SCORING_CONFIG.format(base=str(Path(CONFIGS) / 'vit-tiny_folder-cls.py'),
                                              alloc=str(tmp_path / 'spt' / 'allocation.json')))
    ran = {'RandAugment': 0, 'Mixup': 0}
    monkeypatch.setattr(RandAugment, 'transform',
                        lambda self, results: ran.update(RandAugment=ran['RandAugment'] + 1)
                        or results)
    for cls in (Mixup, CutMix):
        monkeypatch.setattr(cls, 'mix', lambda self, x, s: ran.update(Mixup=ran['Mixup'] + 1)
                            or (x, s))

    # the spies see the training recipe when it runs
    cfg = Config.fromfile(str(cfg_path))
    cfg.merge_from_dict(dict(o.split('=', 1) for o in data_options(root)))
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    DATASETS.build(cfg.train_dataloader.dataset)[0]
    assert ran['RandAugment'] == 1
    model_cfg = dict(cfg.model, data_preprocessor=cfg.data_preprocessor,
                     backbone=dict(cfg.model.backbone, peft=dict(type='Full')))
    trained = MODELS.build(model_cfg)
    assert trained.data_preprocessor.batch_augments is not None
    assert type(trained.head.loss_module).__name__ == 'LabelSmoothLoss'
    ran.update(RandAugment=0)

    tool = _tool()
    real = tool.compute_sensitivity
    seen = dict(data=[])

    def spy(model, backbone, batches, **kw):
        seen['model'] = model

        def loss_fn(m, batch):
            data = m.data_preprocessor(batch, True)
            seen['data'].append(data)
            loss, _ = m.parse_losses(m(**data, mode='loss'))
            return loss
        return real(model, backbone, batches, loss_fn=loss_fn, **kw)
    monkeypatch.setattr(tool, 'compute_sensitivity', spy)
    alloc, path = tool.main([str(cfg_path), '--budget', '2k', '--samples', '6', '--rank', '2',
                             '--device', 'cpu', '--cfg-options'] + data_options(root))

    assert ran == {'RandAugment': 0, 'Mixup': 0}
    model = seen['model']
    assert model.data_preprocessor.batch_augments is None
    assert type(model.head.loss_module).__name__ == 'CrossEntropyLoss'
    assert sum(len(d['data_samples']) for d in seen['data']) == 6
    for data in seen['data']:
        assert data['inputs'].shape[-2:] == (48, 48)  # the test pipeline's centre crop
        for sample in data['data_samples']:
            assert '/train/' in sample.img_path
            assert 'gt_score' not in sample and sample.gt_label.numel() == 1  # hard labels
    fed = json.loads(Path(path).read_text())['sensitivity']
    assert [t['type'] for t in fed['pipeline']] == ['LoadImageFromFile', 'CenterCrop', 'PackInputs']
    assert 'RandAugment' in fed['train_pipeline_replaced']
    assert fed['batch_augments_removed'] == ['Mixup', 'CutMix'] and fed['batch_augments'] == 'none'
    assert fed['loss']['used'] == 'CrossEntropyLoss'
    assert fed['loss']['config']['type'] == 'LabelSmoothLoss'
    assert alloc.budget['met'] == 2000


@pytest.mark.parametrize('config', sorted(str(p) for p in (TESTS.parent / 'configs' / 'spt').glob('*.py')))
def test_scoring_config_of_every_spt_config(config):
    """The shipped SPT configs: scored through their test pipeline, no batch augments; the
    classifiers (trained with Mixup / CutMix, RandAugment, label smoothing) with plain CE."""
    from mmengine.config import Config

    from mmssf.peft.spt.scoring_data import scoring_config
    cfg = Config.fromfile(config)
    scored, fed = scoring_config(cfg)
    test = cfg.test_dataloader.dataset.pipeline
    assert scored.train_dataloader.dataset.pipeline == test
    assert fed['batch_augments'] == 'none'
    assert not any(t in str(scored.train_dataloader.dataset.pipeline)
                   for t in ('RandAugment', 'RandomResizedCrop', 'RandomErasing', 'RandomCrop'))
    if 'cifar100' in config:
        assert 'RandAugment' in fed['train_pipeline_replaced']
        assert fed['batch_augments_removed'] == ['Mixup', 'CutMix']
        assert fed['loss']['used'] == 'CrossEntropyLoss' and scored.model.train_cfg is None
        assert scored.model.head.loss == dict(type='CrossEntropyLoss', loss_weight=1.0)
        assert scored.train_dataloader.batch_size == cfg.train_dataloader.batch_size
    else:
        assert fed['loss']['used'] == 'the task losses as configured'
        assert scored.train_dataloader.batch_size == cfg.test_dataloader.batch_size


# -- SPT-Adapter against the official BlockSPTSeq; training-time details ----------------------
def _all_structured(model, kind, rank=2):
    """An allocation with every weight matrix (q / k / v blocks apart) structured where the
    budget allows: matrices score 1, vectors far less, τ = their structured costs (+ cls)."""
    from mmssf.peft.spt.allocation import candidates, structured_cost
    gen = torch.Generator().manual_seed(0)
    scores = {k: torch.ones_like(v) if v.dim() == 2 else torch.rand(v.shape, generator=gen) * 1e-3
              for k, v in scored_parameters(model).items()}
    modules = dict(model.named_modules())
    cost = sum(structured_cost(modules[c.module], kind, rank, 1 if c.block is None else 3)
               for c in candidates(model, scores, kind) if c.module)
    cls = model.cls_token.numel() if hasattr(model, 'cls_token') else 0
    return allocate(scores, model, cost + cls, kind=kind, rank=rank)


def _randomize_adapters(model, std=0.3):
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if 'adapter_' in name:
                p.add_(torch.randn(p.shape, generator=gen) * std)


def _official_adapter(module, suffix=''):
    """The official ``StructuredTuningModule('adapter')`` in eval: up(GELU(down(x)))."""
    tensors = [getattr(module, f'adapter_{w}{suffix}', None)
               for w in ('down_weight', 'down_bias', 'up_weight', 'up_bias')]
    if tensors[0] is None:
        return None
    dw, db, uw, ub = tensors
    return lambda x: F.linear(F.gelu(F.linear(x, dw, db)), uw, ub)


def _official_attention(qkv, proj, num_heads, x, bias=None, mask=None):
    """The official ``AttentionSPTSeq`` (eval) on separate q / k / v Linears (the rows of the fused
    ``qkv``): ``q = q + A_q(q)`` (k, v alike), attention, ``proj(h) + A_proj(h)``; ``bias`` / ``mask``
    (Swin's relative-position bias and shift mask) added to the logits as WindowMSA does."""
    B, N, C = x.shape
    heads = []
    for i in range(3):
        y = F.linear(x, qkv.weight[i * C:(i + 1) * C], qkv.bias[i * C:(i + 1) * C])
        adapter = _official_adapter(qkv, f'_block{i}')
        if adapter is not None:
            y = y + adapter(y)
        heads.append(y.reshape(B, N, num_heads, C // num_heads).transpose(1, 2))
    q, k, v = heads
    logits = q @ k.transpose(-2, -1) * (C // num_heads) ** -0.5
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = (logits.view(B // mask.shape[0], mask.shape[0], num_heads, N, N)
                  + mask[None, :, None]).view(B, num_heads, N, N)
    h = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
    out = F.linear(h, proj.weight, proj.bias)
    adapter = _official_adapter(proj)
    return out + adapter(h) if adapter is not None else out


def _official_mlp(fc1, fc2, x):
    """The official ``MlpSPTSeq`` (eval): ``fc1 → + A(·) → GELU → fc2 → + A(·)``."""
    h = F.linear(x, fc1.weight, fc1.bias)
    if _official_adapter(fc1) is not None:
        h = h + _official_adapter(fc1)(h)
    y = F.linear(F.gelu(h), fc2.weight, fc2.bias)
    return y + _official_adapter(fc2)(y) if _official_adapter(fc2) is not None else y


def _relative(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize('backbone_name', ['mmpretrain_vit', 'timm_vit', 'mmpretrain_swin'])
def test_spt_adapter_equals_the_official_block(tmp_path, backbone_name):
    """Attention and MLP of a tuned block == the official BlockSPTSeq written above, on the same
    weights (projection adapter parallel on the projection's input, the others sequential)."""
    model, _ = build_backbone(backbone_name)
    alloc = _all_structured(model, 'adapter')
    spt = apply_peft(model, dict(type='SPTAdapter', allocation=alloc))
    _randomize_adapters(model)
    gen = torch.Generator().manual_seed(0)
    if backbone_name == 'mmpretrain_swin':
        block = model.stages[0].blocks[1]
        attn, mlp = block.attn.w_msa, block.ffn
        fc1, fc2 = mlp.layers[0][0], mlp.layers[1]
        n = attn.window_size[0] * attn.window_size[1]
        x = torch.randn(4, n, fc1.in_features, generator=gen)
        bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(
            n, n, -1).permute(2, 0, 1)
        mask = torch.where(torch.rand(2, n, n, generator=gen) < 0.3, -100.0, 0.0)
        calls = [(lambda: attn(x, mask=None), dict(bias=bias)),
                 (lambda: attn(x, mask=mask), dict(bias=bias, mask=mask))]
    else:
        block = (model.layers if backbone_name == 'mmpretrain_vit' else model.blocks)[1]
        attn = block.attn
        fc1, fc2 = ((block.ffn.layers[0][0], block.ffn.layers[1])
                    if backbone_name == 'mmpretrain_vit' else (block.mlp.fc1, block.mlp.fc2))
        x = torch.randn(2, 17, fc1.in_features, generator=gen)
        calls = [(lambda: attn(x), {})]
    # every placement under test is tuned in this block
    assert all(hasattr(attn.qkv, f'adapter_up_weight_block{i}') for i in range(3))
    assert all(hasattr(m, 'adapter_up_weight') for m in (attn.proj, fc1, fc2))
    worst = 0.0
    with torch.no_grad():
        for call, extra in calls:
            want = _official_attention(attn.qkv, attn.proj, attn.num_heads, x, **extra)
            got = call()
            worst = max(worst, _relative(got, want))
            # (the mmssf placement before: proj(h) + A(proj(h)), which the official is not)
            assert (got - want).abs().max() <= 1e-5 * want.abs().max()
        want = _official_mlp(fc1, fc2, x)
        got = (block.ffn(x) - x) if hasattr(block, 'ffn') else block.mlp(x)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    with pytest.raises(MergeError, match='SPTAdapter cannot be merged'):
        spt.merge(model)


def test_spt_adapter_options_default_to_the_official_training(tmp_path):
    """Dropout 0.1 on every adapter input but the projection's, drop-path 0.1 on every adapter;
    the down bias with PyTorch's Linear init (up zero); the placement is not an option."""
    model, _ = build_backbone('mmpretrain_vit')
    alloc = _all_structured(model, 'adapter')
    spt = apply_peft(model, dict(type='SPTAdapter', allocation=alloc))
    adapters = [u for u in spt.units if hasattr(u, 'up_w')]
    assert {u.role for u in adapters} == {'qkv', 'proj', 'fc1', 'fc2'}
    for unit in adapters:
        assert unit.parallel == (unit.role == 'proj')
        assert (unit.dropout, unit.drop_path) == ((0.0 if unit.role == 'proj' else 0.1), 0.1)
        bound = 1 / unit.down_w.shape[1] ** 0.5
        assert unit.down_b.abs().max() <= bound and unit.down_b.abs().min() > 0
        assert not unit.up_w.any() and not unit.up_b.any()
    plain = apply_peft(build_backbone('mmpretrain_vit')[0], dict(type='Adapter', r=2))
    assert all(not u.down_b.any() and u.dropout == 0 for u in plain.units)
    with pytest.raises(ValueError, match='parallel is fixed by the official placement'):
        apply_peft(build_backbone('mmpretrain_vit')[0],
                   dict(type='SPTAdapter', allocation=alloc, parallel=True))
    off = apply_peft(build_backbone('mmpretrain_vit')[0],
                     dict(type='SPTAdapter', allocation=alloc, dropout=0.0, drop_path=0.0))
    assert all((u.dropout, u.drop_path) == (0, 0) for u in off.units if hasattr(u, 'up_w'))


@pytest.mark.parametrize('parallel', [False, True])
def test_adapter_dropout_and_drop_path_in_training(parallel):
    """Training: ``y + droppath(A(dropout(y)))`` (sequential) / ``y + droppath(A(x))``-style with
    dropout on x (parallel), with the same random draws (dropout first, then the drop-path's
    per-sample uniform), drop-path per sample and rescaled; eval: no randomness."""
    model, _ = build_backbone('mmpretrain_vit')
    fc2 = model.layers[0].ffn.layers[1]
    apply_peft(model, dict(type='Adapter', targets=['fc2'], r=3, dropout=0.5, drop_path=0.5,
                           parallel=parallel, down_bias_init='linear'))
    _randomize_adapters(model)
    adapter = _official_adapter(fc2)
    x = torch.randn(16, 5, fc2.in_features)
    with torch.no_grad():
        y = F.linear(x, fc2.weight, fc2.bias)
        src = x if parallel else y
        fc2.eval()
        assert torch.allclose(fc2(x), y + adapter(src), atol=1e-6)
        fc2.train()
        torch.manual_seed(5)
        got = fc2(x)
        torch.manual_seed(5)
        branch = adapter(F.dropout(src, 0.5, True))
        keep = (0.5 + torch.rand(16, 1, 1)).floor()
        want = y + branch / 0.5 * keep
    assert torch.allclose(got, want, atol=1e-5)
    assert 0 < keep.sum() < 16


@pytest.mark.parametrize('shared', [True, False])
def test_spt_lora_q_k_v_share_one_dropout_draw(shared):
    """Official AttentionSPTParallel: one ``x_drop`` for the q, k and v LoRAs of a block (default);
    ``shared_qkv_dropout=False``: one draw per LoRA. fc1 / fc2 draw their own; nothing is held
    after the forward."""
    model, _ = build_backbone('mmpretrain_vit')
    alloc = _all_structured(model, 'lora')
    spt = apply_peft(model, dict(type='SPTLoRA', allocation=alloc, dropout=0.5, drop_path=0.0,
                                 shared_qkv_dropout=shared))
    seen = {}
    for unit in spt.units:
        if hasattr(unit, 'lora_A'):
            def record(x, unit=unit, update=unit.update):
                seen[(unit.name, unit.rows)] = x.detach().clone()
                return update(x)
            unit.update = record
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    qkv = [v for (name, _), v in sorted(seen.items()) if name == 'layers.0.attn.qkv']
    assert len(qkv) == 3
    masks = [(v == 0) for v in qkv]
    assert all(0 < m.float().mean() < 1 for m in masks)
    assert all(torch.equal(masks[0], m) for m in masks[1:]) == shared
    groups = {u.input_dropout for u in spt.units if getattr(u, 'input_dropout', None)}
    assert len(groups) == (2 if shared else 0)  # one per attention
    assert all(g._input is None and g._dropped is None for g in groups)
