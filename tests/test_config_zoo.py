"""The config zoo (``configs/<method>/``): names and READMEs, every config parses with its PEFT
lines, every model builds without weights, and ``count_params.py`` prints the papers' counts.

Time budget: the full-size CIFAR-100 models (ViT-B/16, Swin-B: ~1 s each) are built by ONE
``count_params.py`` subprocess over all of them, which is also what checks the published counts
(SSF, Lian et al. NeurIPS 2022, Table 1 / 5). The dense-task configs (Mask R-CNN / UperNet Swin-T, SETR ViT-L ~300M parameters)
are only parsed and checked line by line here, and their tuned backbone is built in process with
small dims and run once (the full-size builds take about a minute on 2 cores: run
``count_params.py`` on them by hand; the READMEs list the counts it printed).

SPT configs need ``work_dirs/spt_allocations/<config>/allocation.json`` from
``spt_sensitivity.py`` (pretrained weights + data), GLoRA configs
``work_dirs/glora_supports/<config>/glora_support.json`` from ``glora_search.py``. Where it is missing, count_params.py must
fail with a message naming that command (checked); the small dense backbones get a random
allocation made here instead.
"""
import copy
import glob
import importlib.util
import os
import os.path as osp
import re
import subprocess

import pytest
import torch
from mmengine.config import Config

from mmssf.peft.registry_facts import config_names, zoo_folders, zoo_methods
from runner_utils import HANG_TIMEOUT, PY, ROOT

ZOO = osp.join(ROOT, 'configs')
COUNT_TOOL = 'tools/analysis_tools/count_params.py'
#: from the method cards (``card.folder``, ``card.zoo``) of the registered methods
METHOD_FOLDERS = zoo_folders()
# shared stock bases; the `make demo` configs; the benchmark suites (one config per method and
# suite, tested by test_benchmark_suites.py)
NOT_METHOD_FOLDERS = ('_base_', 'demo', 'vtab1k', 'fgvc', 'timm')
# config name prefix -> accepted peft types (every name the method is registered under)
PEFT_OF_PREFIX = {prefix: tuple(config_names(cls)) for prefix, cls in zoo_methods().items()}
PRETRAINED = {  # config family -> backbone checkpoint (dense Swin configs keep the stock URL)
    'vit-base-p16_in21k-pre': 'pretrain/vit-base-p16_in21k_mmpretrain.pth',
    'swin-base_in22k-pre': 'pretrain/swin-base-p4-w7_in22k_mmpretrain.pth',
    'setr_vit-l': 'pretrain/vit-large-p16_in21k_mmseg.pth',
}


def _rel(path):
    return osp.relpath(path, ROOT).replace(os.sep, '/')


CONFIGS = sorted(_rel(p) for p in glob.glob(osp.join(ZOO, '*', '*.py'))
                 if osp.basename(osp.dirname(p)) not in NOT_METHOD_FOLDERS)
BASES = sorted(_rel(p) for p in glob.glob(osp.join(ZOO, '_base_', '*.py')))
CIFAR = [c for c in CONFIGS if 'cifar100' in c]
DENSE = [c for c in CONFIGS if 'cifar100' not in c]


def stem(path):
    return osp.splitext(osp.basename(path))[0]


def prefix(path):
    return stem(path).split('_', 1)[0]


def is_spt(path):
    return prefix(path).startswith('spt-')


def is_glora(path):
    return prefix(path) == 'glora'


def allocation_path(path):
    if is_glora(path):
        return f'work_dirs/glora_supports/{stem(path)}/glora_support.json'
    return f'work_dirs/spt_allocations/{stem(path)}/allocation.json'


def allocation_command(path):
    """The command that writes the file an SPT / GLoRA config reads."""
    if is_glora(path):
        return f'glora_search.py {path} --params 0.3M'
    return f'spt_sensitivity.py {path} --budget 0.4M'


def allocation_missing(path):
    return (is_spt(path) or is_glora(path)) and \
        not osp.isfile(osp.join(ROOT, allocation_path(path)))


def _load_count_tool():
    spec = importlib.util.spec_from_file_location('count_params', osp.join(ROOT, COUNT_TOOL))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def parsed():
    with _load_count_tool().metafile_lookups_cached():  # else ~0.3 s per mmpretrain:: base
        return {p: Config.fromfile(osp.join(ROOT, p)) for p in CONFIGS + BASES}


# ------------------------------------------------------------------ (c) layout, names, READMEs
def test_one_folder_per_method_each_with_a_readme_listing_its_configs():
    folders = sorted(d for d in os.listdir(ZOO)
                     if osp.isdir(osp.join(ZOO, d)) and d not in NOT_METHOD_FOLDERS)
    assert folders == sorted(METHOD_FOLDERS)
    for folder in METHOD_FOLDERS:
        readme = osp.join(ZOO, folder, 'README.md')
        assert osp.isfile(readme), f'{folder}/ has no README.md'
        with open(readme) as f:
            text = f.read()
        mine = [c for c in CONFIGS if c.split('/')[1] == folder]
        assert mine, f'configs/{folder}/ has no config'
        unlisted = [stem(c) for c in mine if stem(c) not in text]
        assert not unlisted, f'{readme} does not list {unlisted}'


def test_config_names_start_with_their_method_folder():
    wrong = [c for c in CONFIGS
             if not (prefix(c) == c.split('/')[1] or prefix(c).startswith(c.split('/')[1] + '-'))
             or prefix(c) not in PEFT_OF_PREFIX]
    assert not wrong, f'config names must start with their method folder: {wrong}'


# ------------------------------------------------------------------ (a) parse, PEFT lines
@pytest.mark.parametrize('path', CONFIGS)
def test_config_parses_with_the_peft_lines(parsed, path):
    cfg = parsed[path]
    with open(osp.join(ROOT, path)) as f:
        code = [ln for ln in f if ln.strip() and not ln.lstrip().startswith('#')]
    assert len(code) <= 15, f'{path}: a zoo config is its stock base plus a few lines'
    assert re.match(r"_base_ = '(mmdet|mmseg)::|_base_ = '\.\./_base_/", code[0]), code[0]
    assert 'mmssf' in cfg.custom_imports['imports']
    backbone = cfg.model.backbone
    assert backbone.type == 'mmssf.PeftBackbone'
    vit = 'vit' in stem(path)
    assert backbone.stock_type == ('VisionTransformer' if vit else 'SwinTransformer')
    assert backbone.peft.type in PEFT_OF_PREFIX[prefix(path)]
    if is_spt(path):
        assert backbone.peft.allocation == allocation_path(path)
    if is_glora(path):
        assert backbone.peft.support == allocation_path(path)
    assert cfg.optim_wrapper.constructor == 'mmssf.PeftOptimWrapperConstructor'
    hooks = [h['type'] for h in cfg.custom_hooks]
    assert 'mmssf.ReparamCheckpointHook' in hooks and 'mmssf.TrainableParamsReportHook' in hooks

    init = backbone.init_cfg
    assert init['type'] == 'Pretrained'
    family = next((k for k in PRETRAINED if k in stem(path)), None)
    if family:
        assert init['checkpoint'] == PRETRAINED[family]
    else:  # Mask R-CNN / UperNet Swin-T: the stock ImageNet-1k URL
        assert init['checkpoint'].startswith('https://')
    if 'cifar100' in path:
        assert cfg.model.head.num_classes == 100 and cfg.data_preprocessor.num_classes == 100
        assert cfg.train_dataloader.dataset.type == 'CIFAR100'
    elif 'mask-rcnn' in path:
        assert cfg.model.type == 'MaskRCNN' and cfg.train_cfg.max_epochs == 12
    else:
        assert cfg.model.decode_head.num_classes == 150 and cfg.train_cfg.max_iters == 160000


@pytest.mark.parametrize('path', BASES)
def test_cifar100_bases_are_stock_configs_at_224px(parsed, path):
    cfg = parsed[path]
    assert 'custom_imports' not in cfg  # eval_stock.py evaluates merged checkpoints with it
    assert cfg.model.type == 'ImageClassifier' and cfg.model.head.num_classes == 100
    assert cfg.model.backbone.type in ('VisionTransformer', 'SwinTransformer')
    assert cfg.model.get('init_cfg') is None, \
        'a model-level init_cfg re-initialises the (already pretrained) backbone in init_weights()'
    train = [t['type'] for t in cfg.train_dataloader.dataset.pipeline]
    assert train[0] == 'RandomResizedCrop' and cfg.train_dataloader.dataset.pipeline[0].scale == 224
    assert cfg.test_dataloader.dataset.pipeline[0].scale == 224
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert [s['type'] for s in cfg.param_scheduler] == ['LinearLR', 'CosineAnnealingLR']
    assert cfg.train_cfg.max_epochs == 100 and cfg.param_scheduler[0].end == 10


# ------------------------------------------------------------------ (a) dense: small builds
SMALL = {
    'SwinTransformer': dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)),
    'VisionTransformer': dict(embed_dims=32, num_layers=2, num_heads=2, img_size=(64, 64),
                              out_indices=(0, 1)),
}


def _random_allocation(backbone_cfg, peft, out_dir):
    from mmengine.registry import MODELS

    from mmssf.peft.spt import allocate, scored_parameters
    stock = dict(backbone_cfg, type=backbone_cfg['stock_type'])
    for key in ('stock_type', 'peft', 'peft_checkpoint'):
        stock.pop(key, None)
    backbone = MODELS.build(stock)
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=gen) ** 4
              for n, p in scored_parameters(backbone).items()}
    kind = {'SPTLoRA': 'lora', 'SPTAdapter': 'adapter'}[peft['type']]
    return allocate(scores, backbone, 2000, kind=kind, rank=2).save(str(out_dir))


@pytest.mark.parametrize('path', DENSE)
def test_dense_peft_backbone_builds_and_runs_small(parsed, path, tmp_path):
    from mmengine.registry import MODELS, init_default_scope

    from mmssf.peft import get_peft
    cfg = parsed[path]
    init_default_scope(cfg.default_scope)
    backbone_cfg = copy.deepcopy(cfg.model.backbone.to_dict())
    backbone_cfg.update(SMALL[backbone_cfg['stock_type']], init_cfg=None)
    peft = backbone_cfg['peft']
    if is_spt(path):  # the config's own allocation fits the full-size backbone only
        peft['allocation'] = _random_allocation(backbone_cfg, peft, tmp_path)
    torch.manual_seed(0)
    model = MODELS.build(backbone_cfg)
    method = type(get_peft(model)).__name__
    baselines = {'linear': 'LinearProbe', 'full': 'FullFineTune'}
    assert method == baselines.get(prefix(path), peft['type'])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    expected = {'linear': 0, 'full': total}.get(prefix(path))
    if expected is None:
        assert 0 < trainable < total
    else:
        assert trainable == expected
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert len(outs) == len(backbone_cfg['out_indices'])
    assert all(o.dim() == 4 and o.shape[0] == 1 and torch.isfinite(o).all() for o in outs)


# ------------------------------------------------------------------ count_params.py
def test_count_params_switches_off_every_weight_source():
    tool = _load_count_tool()
    model = dict(
        type='EncoderDecoder', pretrained='pretrain/model.pth',
        backbone=dict(type='mmssf.PeftBackbone', peft=dict(type='SSF'), peft_checkpoint='p.pth',
                      init_cfg=[dict(type='Kaiming', layer='Conv2d')]),
        decode_head=dict(init_cfg=dict(type='Pretrained', checkpoint='head.pth')),
        auxiliary_head=[dict(init_cfg=dict(type='Normal', std=0.01))])
    dropped = tool.drop_pretrained(model)
    assert model['pretrained'] is None and model['backbone']['init_cfg'] is None
    assert model['backbone']['peft_checkpoint'] is None
    assert model['decode_head']['init_cfg'] is None
    assert model['auxiliary_head'][0]['init_cfg'] == dict(type='Normal', std=0.01)  # kept
    assert len(dropped) == 4 and any("'head.pth'" in d for d in dropped)


@pytest.fixture(scope='module')
def cifar_report():
    """count_params.py over every CIFAR-100 config, once: (result, {config: its output})."""
    result = subprocess.run([PY, COUNT_TOOL] + CIFAR, cwd=ROOT, capture_output=True, text=True,
                            timeout=HANG_TIMEOUT, env=dict(os.environ, OMP_NUM_THREADS='2'))
    sections = {}
    for block in re.split(r'^== ', result.stdout, flags=re.M)[1:]:
        name, _, body = block.partition('\n')
        sections[name.strip()] = body
    return result, sections


SUMMARY = re.compile(r'^trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| '
                     r'trainable%: (\d+\.\d{4})$', re.M)


def test_cifar100_models_build_without_weights(cifar_report):
    result, sections = cifar_report
    missing = [c for c in CIFAR if allocation_missing(c)]
    assert result.returncode == (1 if missing else 0), result.stderr[-3000:]
    for path in CIFAR:
        if path in missing:  # the clear message, with the command that writes the file
            assert f'error: {path}: ' in result.stderr
            assert allocation_command(path) in result.stderr
            assert allocation_path(path) in result.stderr
            continue
        assert path in sections, f'{path}: no report\n{result.stderr[-3000:]}'
        body = sections[path]
        assert 'no weights loaded or downloaded: set to None model.backbone.init_cfg' in body
        found = SUMMARY.findall(body)
        assert len(found) == 1, body
        trainable, total = (int(x.replace(',', '')) for x in found[0][:2])
        if prefix(path) == 'full':
            assert trainable == total
        else:
            assert 0 < trainable < total / 20  # (Mona on Swin-B: 4.2 %)


# the papers' counts (SSF, Lian et al. NeurIPS 2022, Table 1 / 5), 100-class head included
EXPECTED_LINES = {
    'configs/ssf/ssf_vit-base-p16_in21k-pre_4xb64_cifar100-224px.py':
        'trainable params: 282,724 || all params: 86,081,380 || trainable%: 0.3284',
    'configs/vpt/vpt-deep_vit-base-p16_in21k-pre_4xb64_cifar100-224px.py':
        'trainable params: 537,700 || all params: 86,336,356 || trainable%: 0.6228',
    'configs/linear/linear_vit-base-p16_in21k-pre_4xb32_cifar100-224px.py':
        'trainable params: 76,900 || all params: 85,875,556 || trainable%: 0.0895',
    'configs/ssf/ssf_swin-base_in22k-pre_4xb32_cifar100-224px.py':
        'trainable params: 369,764 || all params: 87,112,988 || trainable%: 0.4245',
}
EXPECTED_TRAINABLE = {
    'configs/vpt/vpt-shallow_vit-base-p16_in21k-pre_4xb64_cifar100-224px.py': 230_500,
    'configs/bitfit/bitfit_vit-base-p16_in21k-pre_4xb64_cifar100-224px.py': 179_812,
    'configs/linear/linear_swin-base_in22k-pre_4xb32_cifar100-224px.py': 102_500,
}


@pytest.mark.parametrize('path', sorted(EXPECTED_LINES))
def test_count_params_prints_the_published_count(cifar_report, path):
    _, sections = cifar_report
    assert EXPECTED_LINES[path] in sections[path].splitlines(), sections.get(path)


@pytest.mark.parametrize('path', sorted(EXPECTED_TRAINABLE))
def test_count_params_trainable_matches_the_papers(cifar_report, path):
    _, sections = cifar_report
    assert f'trainable params: {EXPECTED_TRAINABLE[path]:,} ||' in sections[path]
