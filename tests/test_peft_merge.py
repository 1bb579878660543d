"""Merge equivalence: every mergeable method x every backbone implementation (rows from
``method_matrix.MERGE_CASES``; non-mergeable methods must refuse, ``REFUSE_CASES``). The
equivalence runs on ``pytest --device`` (cpu by default, cuda on a GPU machine)."""
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import build_backbone, flatten_outputs, randomize_peft
from method_matrix import MERGE_CASES, REFUSE_CASES
from mmssf.peft import MergeError, apply_peft, get_peft

MERGE_IDS = [(m, i) for m, cases in sorted(MERGE_CASES.items()) for i in range(len(cases))]
REFUSE_IDS = [(m, i) for m, cases in sorted(REFUSE_CASES.items()) for i in range(len(cases))]


def _has_hooks(model):
    return any(m._forward_hooks or m._forward_pre_hooks or 'forward' in m.__dict__
               for m in model.modules())


@pytest.mark.parametrize('method,case', MERGE_IDS, ids=[f'{m}{i}' for m, i in MERGE_IDS])
def test_merge_equivalence(tmp_path, method, case, backbone_name, device):
    model, size = build_backbone(backbone_name)
    stock, _ = build_backbone(backbone_name, seed=123)
    stock_shapes = {k: v.shape for k, v in stock.state_dict().items()}
    apply_peft(model, MERGE_CASES[method][case](model, tmp_path))
    randomize_peft(model)
    model.to(device)
    stock.to(device)
    x = torch.randn(2, 3, *size).to(device)
    with torch.no_grad():
        tuned = flatten_outputs(model(x))
        get_peft(model).merge(model)
        merged = flatten_outputs(model(x))
    assert len(tuned) == len(merged) > 0
    for t, m in zip(tuned, merged):
        assert (t - m).abs().max().item() <= 1e-5
    assert get_peft(model) is None and not _has_hooks(model)
    assert type(model) is type(stock)
    assert {k: v.shape for k, v in model.state_dict().items()} == stock_shapes
    stock.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        for t, s in zip(tuned, flatten_outputs(stock(x))):
            assert (t - s).abs().max().item() <= 1e-5


@pytest.mark.parametrize('method,case', REFUSE_IDS, ids=[f'{m}{i}' for m, i in REFUSE_IDS])
def test_merge_is_refused_clearly(tmp_path, method, case, backbone_name):
    model, _ = build_backbone(backbone_name)
    cfg = REFUSE_CASES[method][case](model, tmp_path)
    peft = apply_peft(model, cfg)
    assert peft.merge_blockers()  # known as soon as the method is applied
    with pytest.raises(MergeError, match=type(peft).__name__[:3]):
        peft.merge(model)


def test_tuning_changes_outputs(backbone_name):
    """The equivalence above is not vacuous: randomized SSF moves the outputs."""
    model, size = build_backbone(backbone_name)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        before = flatten_outputs(model(x))
        apply_peft(model, dict(type='SSF'))
        randomize_peft(model)
        after = flatten_outputs(model(x))
    assert max((a - b).abs().max().item() for a, b in zip(before, after)) > 1e-3


def test_user_shift_on_bias_free_producer_refuses_merge():
    model, _ = build_backbone('mmpretrain_swin')
    apply_peft(model, dict(type='SSF', targets=['merge_reduction']))
    with pytest.raises(MergeError, match='no bias'):
        get_peft(model).merge(model)


NO_MMSSF_CASES = {'SSF': dict(type='SSF'), 'DoRA': dict(type='DoRA', targets=['qkv', 'proj']),
                  'SNELL': dict(type='SNELL', r=4)}


def test_merged_state_dicts_load_without_mmssf(tmp_path):
    """One process that never imports mmssf loads every merged (method, backbone) state dict
    with strict=True and reproduces the tuned outputs."""
    from conftest import BACKBONES
    cases = []
    for method, cfg in NO_MMSSF_CASES.items():
        for name in sorted(BACKBONES):
            model, size = build_backbone(name)
            apply_peft(model, dict(cfg))
            randomize_peft(model)
            x = torch.randn(1, 3, *size)
            with torch.no_grad():
                expected = flatten_outputs(model(x))
            get_peft(model).merge(model)
            path = tmp_path / f'{method}-{name}.pth'
            torch.save({'state_dict': model.state_dict(), 'x': x, 'expected': expected}, path)
            cases.append((f'{method}-{name}', name, str(path)))
    script = textwrap.dedent(f'''
        import sys, torch
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from conftest import build_backbone, flatten_outputs
        for case, name, path in {cases!r}:
            model, _ = build_backbone(name, seed=7)
            ckpt = torch.load(path, weights_only=True)
            model.load_state_dict(ckpt['state_dict'], strict=True)
            with torch.no_grad():
                outs = flatten_outputs(model(ckpt['x']))
            print('DIFF', case, max((a - b).abs().max().item() for a, b in zip(outs, ckpt['expected'])))
        assert 'mmssf' not in sys.modules
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    diffs = dict(line.split()[1:] for line in result.stdout.splitlines() if line.startswith('DIFF '))
    assert sorted(diffs) == sorted(c[0] for c in cases)
    assert all(float(d) <= 1e-5 for d in diffs.values()), diffs
