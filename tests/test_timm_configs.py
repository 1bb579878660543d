"""configs/timm/: timm backbones in OpenMMLab configs — the SSF paper's CIFAR-100 setting on
timm's ViT-B/16 ImageNet-21k (mmpretrain ``TIMMBackbone``), UperNet on DINOv2 ViT-B/14 with LoRA
(mmseg ``TIMMBackbone``, timm's multi-level features) and the VTAB-1k suite on the timm
ViT-B/16. Every config parses; the tuned ones are their stock config plus the mmssf lines; the
SSF count at full size is the official 282,724; every model builds small (no weights) and runs."""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from runner_utils import ROOT

TIMM = osp.join(ROOT, 'configs', 'timm')
CONFIGS = sorted(osp.basename(p) for p in glob.glob(osp.join(TIMM, '*.py')))
CIFAR_SSF = 'ssf_vit-base-p16-timm-in21k_4xb64_cifar100-224px.py'
UPERNET_LORA = 'lora_upernet_dinov2-vit-b14-reg4_8xb2-160k_ade20k-512x512.py'
VTAB_SSF = 'ssf_vit-base-p16-timm-in21k_vtab1k.py'
TUNED = [CIFAR_SSF, UPERNET_LORA, VTAB_SSF]
#: tuned config -> the stock config it inherits (merged checkpoints are evaluated with it)
STOCK = {CIFAR_SSF: 'vit-base-p16-timm-in21k_cifar100-224px.py',
         UPERNET_LORA: UPERNET_LORA.split('_', 1)[1], VTAB_SSF: VTAB_SSF.split('_', 1)[1]}
#: tiny timm ViT dims (random init, no weights)
SMALL_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
SMALL_DINO = dict(img_size=28, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0,
                  out_indices=(0, 1, 2, 3))


def load(name):
    return Config.fromfile(osp.join(TIMM, name))


def test_the_folder_holds_the_three_tuned_configs_and_their_stock_ones():
    assert CONFIGS == sorted(TUNED + list(STOCK.values()))
    for tuned, stock in STOCK.items():
        with open(osp.join(TIMM, tuned)) as f:
            assert f"_base_ = './{stock}'" in f.read()


@pytest.mark.parametrize('name', TUNED)
def test_tuned_config_is_its_stock_config_plus_the_peft_lines(name):
    cfg, stock = load(name), load(STOCK[name])
    backbone = cfg.model.backbone
    assert backbone.type == 'mmssf.PeftBackbone' and backbone.stock_type == 'TIMMBackbone'
    assert stock.model.backbone.type == 'TIMMBackbone'
    assert {k: v for k, v in backbone.items() if k not in ('type', 'stock_type', 'peft')} == \
        {k: v for k, v in stock.model.backbone.items() if k != 'type'}
    assert 'mmssf' in cfg.custom_imports['imports']
    assert cfg.optim_wrapper.constructor == 'mmssf.PeftOptimWrapperConstructor'
    assert [h['type'] for h in cfg.custom_hooks] == ['mmssf.ReparamCheckpointHook',
                                                     'mmssf.TrainableParamsReportHook']
    assert cfg.model.get('init_cfg') is None  # (a parent init would overwrite the backbone)
    for key in ('neck', 'head', 'decode_head', 'auxiliary_head'):
        assert cfg.model.get(key) == stock.model.get(key), key


def test_cifar100_ssf_is_the_ssf_paper_setting_with_the_official_count():
    """The SSF code's own model (timm vit_base_patch16_224_in21k) on CIFAR-100: SSF 205,824 + a
    100-class head 76,900 = 282,724 (built at full size, without weights)."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    cfg = load(CIFAR_SSF)
    assert cfg.model.backbone.model_name == 'vit_base_patch16_224.augreg_in21k'
    assert cfg.model.backbone.peft == dict(type='SSF')
    assert cfg.model.head.num_classes == 100 and cfg.train_dataloader.dataset.type == 'CIFAR100'
    assert cfg.optim_wrapper.optimizer.lr == 1e-3 and cfg.train_dataloader.batch_size == 64
    init_default_scope('mmpretrain')
    model_cfg = copy.deepcopy(cfg.model.to_dict())
    model_cfg['backbone']['checkpoint_path'] = ''
    model = MODELS.build(model_cfg)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 282_724


def _small_classifier(cfg):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    model_cfg = copy.deepcopy(cfg.model.to_dict())
    model_cfg['backbone'].update(SMALL_VIT, checkpoint_path='')
    model_cfg['head']['in_channels'] = SMALL_VIT['embed_dim']
    return MODELS.build(model_cfg)


def test_cifar100_ssf_builds_small_and_classifies():
    model = _small_classifier(load(CIFAR_SSF))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all('.ssf_' in n or n.startswith('head.') for n in trainable)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32), mode='tensor')
    assert logits.shape == (2, 100)


def test_vtab1k_on_the_timm_backbone_takes_the_suite_recipe():
    """run_table's run config (task, splits, recipe) applies to the timm method config as to the
    mmpretrain one: classes, drop-path on the timm model, the recipe's optimizer."""
    from mmssf.benchmarks import get_suite, load_recipes, run_config
    suite = get_suite('vtab1k')
    recipe = load_recipes(suite.recipes_file, suite.tasks, suite.train_augs)['ssf']['dtd']
    cfg = run_config(load(VTAB_SSF), suite, 'dtd', '/data/vtab-1k', *suite.splits['official'],
                     recipe)
    assert cfg.model.head.num_classes == suite.classes['dtd'] == 47
    assert cfg.model.backbone.drop_path_rate == recipe.drop_path
    assert cfg.optim_wrapper.optimizer.lr == recipe.lr
    model = _small_classifier(cfg)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32), mode='tensor').shape == (1, 47)
    assert {n for n, p in model.named_parameters() if p.requires_grad} >= {'head.fc.weight'}


def small_upernet(cfg):
    """The DINOv2 UperNet model config at tiny dims (no weights)."""
    model = copy.deepcopy(cfg.model.to_dict())
    dims = SMALL_DINO['embed_dim']
    model['backbone'].update(SMALL_DINO, pretrained=False)
    model['backbone'].pop('pretrained_cfg_overlay')
    model['data_preprocessor']['size'] = (28, 28)
    model['neck'].update(in_channels=[dims] * 4, out_channels=dims)
    model['decode_head'].update(in_channels=[dims] * 4, channels=dims)
    model['auxiliary_head'].update(in_channels=dims, channels=dims // 2)
    return model


def test_dinov2_upernet_lora_builds_small_and_segments():
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from mmssf.peft import get_peft
    cfg = load(UPERNET_LORA)
    assert cfg.model.backbone.model_name.startswith('vit_base_patch14_reg4_dinov2')
    assert cfg.model.backbone.out_indices == (3, 5, 7, 11) and cfg.model.backbone.features_only
    assert cfg.model.backbone.peft == dict(type='LoRA', r=8, targets=['qkv'])
    init_default_scope('mmseg')
    model = MODELS.build(small_upernet(cfg))
    inner = model.backbone.timm_model.model
    assert type(inner).__name__ == 'VisionTransformer' and get_peft(inner) is not None
    lora = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert lora and all('.attn.qkv.' in n and 'lora' in n for n in lora)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 28, 28), mode='tensor')
    assert out.shape == (1, 150, 8, 8)  # (the 2 x 2 grid of a 28 px input, the neck's x4 level)


# -- acceptance: the DINOv2 UperNet LoRA config trains, merges and evaluates as stock -----------
TINY_UPERNET = '''_base_ = {base!r}
crop_size = (28, 28)
dims = 32
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(embed_dim=dims, depth=4, num_heads=2, mlp_ratio=2.0, img_size=28,
                  out_indices=(0, 1, 2, 3), pretrained_cfg_overlay=dict(file={weights!r})),
    neck=dict(in_channels=[dims] * 4, out_channels=dims),
    decode_head=dict(in_channels=[dims] * 4, channels=dims),
    auxiliary_head=dict(in_channels=dims, channels=dims // 2))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(40, 40), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={data!r}, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root={data!r}, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=1, val_interval=1)
# (one step large enough to move the merged weights: no warm-up)
optim_wrapper = dict(optimizer=dict(lr=1e-2))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=1)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
randomness = dict(seed=0)
'''


@pytest.mark.slow
def test_dinov2_upernet_lora_trains_and_its_merged_checkpoint_evaluates_under_the_stock_config(
        tmp_path, device_env):
    """The LoRA config and its stock config at tiny dims, the DINOv2 weights a local file written
    here: one iteration through tools/train.py; ``iter_1_merged.pth`` holds no PEFT tensor and,
    tested with the stock config (tools/misc/eval_stock.py), gives the metrics of the tuned
    ``iter_1.pth`` under the tuned config."""
    import timm

    from mmssf.datasets import make_ade20k
    from mmssf.peft.registry_facts import methods_of_tensor
    from runner_utils import read_json, run_tool
    data = make_ade20k(str(tmp_path / 'ade'), num_train=2, num_val=2) + '/'
    torch.manual_seed(0)
    source = timm.create_model('vit_base_patch14_reg4_dinov2', pretrained=False, embed_dim=32,
                               depth=4, num_heads=2, mlp_ratio=2.0, img_size=28)
    weights = str(tmp_path / 'dinov2_tiny.pth')
    torch.save(source.state_dict(), weights)
    configs = {}
    for kind, name in (('tuned', UPERNET_LORA), ('stock', STOCK[UPERNET_LORA])):
        configs[kind] = str(tmp_path / f'{kind}.py')
        with open(configs[kind], 'w') as f:
            f.write(TINY_UPERNET.format(base=osp.join(TIMM, name), weights=weights, data=data))
    work = tmp_path / 'work'
    log = run_tool(['tools/train.py', configs['tuned'], '--work-dir', str(work)], env=device_env)
    assert 'trainable params:' in log
    merged = torch.load(work / 'iter_1_merged.pth', weights_only=True)
    assert not any(methods_of_tensor(k) for k in merged['state_dict'])
    # the Runner's init kept the DINOv2 file (frozen tensors equal it), LoRA moved qkv
    merged_vit = {k[len('backbone.timm_model.model.'):]: v for k, v in
                  merged['state_dict'].items() if k.startswith('backbone.timm_model.model.')}
    pretrained = source.state_dict()
    for key in ('blocks.0.mlp.fc1.weight', 'blocks.3.attn.proj.weight', 'cls_token', 'reg_token',
                'pos_embed', 'patch_embed.proj.weight', 'blocks.2.ls1.gamma'):
        assert torch.equal(merged_vit[key], pretrained[key]), key
    qkv = merged_vit['blocks.0.attn.qkv.weight'] - pretrained['blocks.0.attn.qkv.weight']
    assert qkv.abs().max() > 1e-6
    # (keyed by the tuned module: the ViT inside both wrappers)
    assert merged['meta']['mmssf']['methods']['backbone.timm_model.model']['type'] == 'LoRA'
    run_tool(['tools/test.py', configs['tuned'], str(work / 'iter_1.pth'), '--work-dir',
              str(tmp_path / 't1'), '--out', str(tmp_path / 'tuned.json')], env=device_env)
    run_tool(['tools/misc/eval_stock.py', configs['stock'], str(work / 'iter_1_merged.pth'),
              '--work-dir', str(tmp_path / 't2'), '--out', str(tmp_path / 'stock.json')],
             env=device_env)
    tuned, stock = read_json(tmp_path / 'tuned.json'), read_json(tmp_path / 'stock.json')
    assert tuned.keys() == stock.keys() and tuned
    for key in tuned:
        assert tuned[key] == pytest.approx(stock[key], abs=1e-6), key


def test_run_table_dry_run_on_the_timm_backbone(tmp_path, capsys):
    """The documented VTAB-1k run on timm (``run_table.py --config configs/timm/...``): the run
    configs are written, the missing timm file is named with the option that points at it, and
    the full-size timm ViT-B/16 + SSF on the 100-class cifar task counts 282,724 (the official
    SSF count, as on the mmpretrain ViT)."""
    import importlib.util

    from mmssf.datasets import make_vtab1k
    spec = importlib.util.spec_from_file_location(
        'run_table', osp.join(ROOT, 'tools', 'benchmarks', 'run_table.py'))
    run_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_table)
    data = make_vtab1k(str(tmp_path / 'data'), tasks=('cifar', ), img_size=16)
    run_table.main(['--suite', 'vtab1k', '--method', 'ssf', '--data-root', data, '--tasks',
                    'cifar', '--work-dir', str(tmp_path), '--dry-run', '--config',
                    osp.join(TIMM, VTAB_SSF)])
    out = capsys.readouterr().out
    assert 'cifar: ssf trainable params: 282,724 ||' in out
    assert 'vit_base_patch16_224.augreg_in21k.safetensors do not exist' in out
    assert 'model.backbone.checkpoint_path=FILE' in out
    run = tmp_path / 'vtab1k/ssf/official/cifar/dry_run/configs'
    stock = Config.fromfile(str(run / 'stock.py'))
    assert stock.model.backbone.type == 'TIMMBackbone' and stock.model.head.num_classes == 100
    assert Config.fromfile(str(run / 'train.py')).model.backbone.stock_type == 'TIMMBackbone'


@pytest.mark.parametrize('name', TUNED)
def test_count_params_switches_off_the_timm_weight_files(name):
    """count_params.py builds without weights: a timm wrapper's ``checkpoint_path`` and
    ``pretrained=True`` (with its local file) are dropped and named."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'count_params', osp.join(ROOT, 'tools', 'analysis_tools', 'count_params.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = load(name).model.to_dict()
    dropped = tool.drop_pretrained(model)
    assert not model['backbone'].get('checkpoint_path') and not model['backbone'].get('pretrained')
    assert any('.safetensors' in d for d in dropped), dropped
