"""GLoRA's search: the supernet equals the official ``SuperScalableLinear`` at every support (its
``prepare_path`` written here, reading the smaller supports from the largest tensors), draws a
support per forward, and refuses to merge; the evolutionary search keeps to its limit and
returns its best candidate; ``tools/analysis_tools/glora_search.py`` trains a supernet on
generated data and writes a support file that GLoRA(support=FILE) builds, within the limit and
with the file's count; bad arguments fail clearly, before any work.
"""
import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import build_backbone, flatten_outputs, randomize_peft
from mmssf.peft import MergeError, OptionError, apply_peft
from mmssf.peft.glora import CHOICES, TENSORS, layer_cost

TESTS = Path(__file__).parent
REL = 1e-5


def rel_err(a, b):
    return max(((x - y).norm() / y.norm()).item() for x, y in zip(a, b))


# -- the official supernet layer ----------------------------------------------------------------
def official_prepare_path(kind, xd, xu=None):
    """``SuperScalableLinear.prepare_path`` (official rank = the supernet's)."""
    if xu is not None:
        if kind == 'lora':
            return xd @ xu
        if kind == 'vector':
            return xd[:, 0].unsqueeze(1)
        if kind == 'constant':
            return xd[0, 0]
        return torch.zeros(xd.shape[0], xu.shape[1])
    if kind == 'vector':
        return xd
    if kind == 'constant':
        return xd[0]
    return torch.zeros(1)


def official_super_forward(x, weight, bias, mod, config):
    a = official_prepare_path(config['A'], mod.glora_A_d, mod.glora_A_u)
    b = official_prepare_path(config['B'], mod.glora_B_d, mod.glora_B_u)
    c = official_prepare_path(config['C'], mod.glora_C_d, mod.glora_C_u)
    d = official_prepare_path(config['D'], mod.glora_D)
    e = official_prepare_path(config['E'], mod.glora_E)
    optimal_weight = weight + weight * a + b
    optimal_bias = bias + bias * d + e
    optimal_prompt = torch.matmul(weight, c).squeeze()
    return F.linear(x, optimal_weight, optimal_bias + optimal_prompt)


def random_supports(names, seed):
    rng = random.Random(seed)
    return {n: {k: rng.choice(CHOICES[k]) for k in TENSORS} for n in names}


@pytest.mark.parametrize('backbone_name', ['mmpretrain_vit', 'mmpretrain_swin'])
def test_supernet_equals_the_official_super_linear_at_fixed_supports(backbone_name):
    model, size = build_backbone(backbone_name)
    method = apply_peft(model, dict(type='GLoRA', supernet=True, r=3))
    randomize_peft(model)
    modules = dict(model.named_modules())
    x = torch.randn(2, 3, *size)
    for seed in range(3):
        stock, _ = build_backbone(backbone_name)
        supports = random_supports([u.name for u in method.units], seed)
        stock_modules = dict(stock.named_modules())
        for name, config in supports.items():
            linear = stock_modules[name]
            linear.forward = lambda t, lin=linear, mod=modules[name], c=config: \
                official_super_forward(t, lin.weight, lin.bias, mod, c)
        method.set_supports(supports)
        with torch.no_grad():
            assert rel_err(flatten_outputs(model(x)), flatten_outputs(stock(x))) <= REL


def test_supernet_draws_a_support_per_forward_and_does_not_merge():
    model, size = build_backbone('mmpretrain_vit')
    method = apply_peft(model, dict(type='GLoRA', supernet=True))
    randomize_peft(model)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        random.seed(0)
        a = flatten_outputs(model(x))
        b = flatten_outputs(model(x))
        random.seed(0)
        again = flatten_outputs(model(x))
    assert rel_err(a, b) > 1e-4  # another support drawn
    assert rel_err(a, again) == 0  # seeded by `random`, as the official
    fixed = random_supports([u.name for u in method.units], 0)
    method.set_supports(fixed)
    with torch.no_grad():
        assert rel_err(flatten_outputs(model(x)), flatten_outputs(model(x))) == 0
    with pytest.raises(MergeError, match='supernet.*glora_search.py'):
        method.merge(model)
    with pytest.raises(ValueError, match='every tuned layer'):
        method.set_supports(dict(list(fixed.items())[:1]))
    with pytest.raises(OptionError, match='supernet=True.*A'):
        apply_peft(build_backbone('mmpretrain_vit')[0], dict(type='GLoRA', supernet=True, A='none'))


def test_supernet_holds_the_largest_supports():
    model, _ = build_backbone('mmpretrain_vit')
    full, _ = build_backbone('mmpretrain_vit')
    ours = apply_peft(model, dict(type='GLoRA', supernet=True, r=3))
    largest = apply_peft(full, dict(type='GLoRA', r=3))
    assert {k: v.shape for k, v in ours.peft_state_dict(model).items()} == \
        {k: v.shape for k, v in largest.peft_state_dict(full).items()}


# -- the evolutionary search --------------------------------------------------------------------
LAYERS = {f'l{i}': (16, 48 if i % 2 else 16) for i in range(6)}


def score_of(supports):
    """A made-up val score: rewards lora on A and vector on D, so the best is known."""
    return sum((s['A'] == 'lora') + 0.5 * (s['D'] == 'vector') for s in supports.values())


def test_evolution_keeps_to_the_limit_and_returns_its_best():
    from mmssf.peft.glora_evolution import GLoRAEvolution
    limit = 1500
    seen = []

    def evaluate(supports):
        seen.append(supports)
        return score_of(supports)
    search = GLoRAEvolution(LAYERS, 2, evaluate, max_params=limit, min_params=100, epochs=4,
                            population=12, select=4, mutation=5, crossover=5, seed=0)
    best, info = search.search()
    costs = [sum(layer_cost(s[n], *LAYERS[n], 2) for n in LAYERS) for s in seen]
    assert all(100 <= c <= limit for c in costs)
    assert len({json.dumps(s, sort_keys=True) for s in seen}) == len(seen)  # once each
    assert score_of(best) == max(score_of(s) for s in seen) == info['score']
    assert info['params'] == sum(layer_cost(best[n], *LAYERS[n], 2) for n in LAYERS)
    assert info['evaluated'] == len(seen) >= 12 and len(info['history']) == 4
    again, _ = GLoRAEvolution(LAYERS, 2, score_of, max_params=limit, min_params=100, epochs=4,
                              population=12, select=4, mutation=5, crossover=5, seed=0).search()
    assert again == best  # the search's draws are its own seed's
    # the rounds improve on the random start (mutation / crossover of the best)
    assert info['history'][-1]['best'] >= info['history'][0]['best']


def test_evolution_refuses_a_limit_no_random_support_meets():
    from mmssf.peft.glora_evolution import GLoRAEvolution
    with pytest.raises(ValueError, match=r'none of 50 random supports met the limit.*'
                                         r'on average.*--params'):
        GLoRAEvolution(LAYERS, 2, score_of, max_params=3, population=4, max_draws=50).search()
    with pytest.raises(ValueError, match='min_params 10 exceeds max_params 5'):
        GLoRAEvolution(LAYERS, 2, score_of, max_params=5, min_params=10)


# -- the tool -----------------------------------------------------------------------------------
def _tool():
    spec = importlib.util.spec_from_file_location(
        'glora_search', TESTS.parent / 'tools' / 'analysis_tools' / 'glora_search.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GLORA_CONFIG = '''
_base_ = {base!r}
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft=dict(type='GLoRA', support={support!r})))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook')]
train_cfg = dict(max_epochs=1, val_interval=1)
'''


@pytest.fixture
def glora_config(tmp_path):
    from runner_utils import CONFIGS
    support = str(tmp_path / 'glora' / 'glora_support.json')
    path = tmp_path / 'glora_tiny.py'
    path.write_text(GLORA_CONFIG.format(base=str(Path(CONFIGS) / 'vit-tiny_folder-cls.py'),
                                        support=support))
    return str(path), support


def test_glora_search_writes_a_support_that_glora_builds(tmp_path, glora_config, device_env,
                                                         monkeypatch):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    from mmssf.datasets.image_folder import make_image_folder
    from runner_utils import data_options
    for key, value in device_env.items():
        monkeypatch.setenv(key, value)
    root = make_image_folder(str(tmp_path / 'data'), per_class=2) + '/'
    config, support = glora_config
    limit = 2500
    info, path = _tool().main([config, '--params', str(limit), '--rank', '2', '--epochs', '2',
                               '--population', '6', '--select', '3', '--mutation', '3',
                               '--crossover', '3', '--cfg-options'] + data_options(root))
    assert path == support  # (the config's own support file)
    raw = json.loads(Path(path).read_text())
    assert raw['params'] <= limit and raw['search']['limit'] == [0, limit]
    assert raw['search']['metric'] == 'accuracy/top1' and raw['search']['evaluated'] >= 6
    assert Path(raw['search']['supernet']['work_dir'], 'epoch_1.pth').is_file()

    model, _ = build_backbone('mmpretrain_vit')
    method = apply_peft(model, dict(type='GLoRA', support=path))
    assert method.num_trainable(model) == raw['params'] == info.params
    assert sum(layer_cost(c, *method.layers()[n], 2) for n, c in raw['supports'].items()) \
        == raw['params']

    cfg = Config.fromfile(config)  # the config itself now builds and trains that support
    cfg.merge_from_dict(dict(o.split('=', 1) for o in data_options(root)))
    init_default_scope('mmpretrain')
    built = MODELS.build(cfg.model)
    assert sum(p.numel() for p in built.backbone.parameters() if p.requires_grad) \
        == raw['params']


@pytest.mark.parametrize('args,match', [
    (['--params', 'lots'], "--params: cannot read 'lots'"),
    (['--params', '0'], "--params: cannot read '0'.*at least 1"),
    (['--params', '1k', '--min-params', '2k'], '--min-params 2k exceeds --params 1k'),
    (['--params', '1k', '--population', '0'], '--population must be >= 1'),
    (['--params', '1k', '--m-prob', '1.5'], r'--m-prob must be in \[0, 1\]'),
    (['--params', '1k', '--supernet', '/nonexistent/s.pth'], '--supernet /nonexistent/s.pth does '
                                                             'not exist'),
])
def test_glora_search_bad_arguments_fail_clearly(glora_config, args, match):
    with pytest.raises(SystemExit, match=match):
        _tool().main([glora_config[0]] + args)


def test_glora_search_refuses_a_config_it_cannot_search(tmp_path):
    from runner_utils import CONFIGS
    stock = str(Path(CONFIGS) / 'vit-tiny_folder-cls.py')
    with pytest.raises(SystemExit, match="not an mmssf.PeftBackbone"):
        _tool().main([stock, '--params', '1k', '--out', str(tmp_path)])
    lora = tmp_path / 'lora.py'
    lora.write_text(GLORA_CONFIG.format(base=stock, support='x').replace(
        "peft=dict(type='GLoRA', support='x')", "peft=dict(type='LoRA')"))
    with pytest.raises(SystemExit, match='--out is needed'):
        _tool().main([str(lora), '--params', '1k'])
