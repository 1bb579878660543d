"""tools/model_converters/merge_peft.py: offline merge of a tuned checkpoint into the stock one.

The tool's output for ``X.pth`` must be the file ``ReparamCheckpointHook`` writes as
``X_merged.pth`` (same keys, exactly equal tensors, same meta), also for an ``X.pth`` trained
without the hook, and must load with ``weights_only=True`` / ``strict=True`` into the stock model.
"""
import importlib.util
import os.path as osp

import pytest
import torch

from runner_utils import CONFIGS, ROOT, data_options, read_json, run_tool, write_peft_config

STOCK = osp.join(CONFIGS, 'vit-tiny_folder-cls.py')
TOOL = 'tools/model_converters/merge_peft.py'
ONE_EPOCH = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1']


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _assert_same_state(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def _tool_module():
    spec = importlib.util.spec_from_file_location('merge_peft', osp.join(ROOT, TOOL))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def trained(tmp_path_factory, folder_data):
    """The same SSF run twice (fixed seed): with the re-param hook, and without any mmssf hook."""
    tmp = tmp_path_factory.mktemp('merge')
    with_hook = write_peft_config(tmp / 'ssf.py', STOCK, 'VisionTransformer', dict(type='SSF'))
    no_hook = tmp / 'ssf_nohook.py'
    no_hook.write_text(f'_base_ = {with_hook!r}\ncustom_hooks = []\n')
    for cfg, work in ((with_hook, 'hook'), (str(no_hook), 'nohook')):
        run_tool(['tools/train.py', cfg, '--work-dir', str(tmp / work), '--cfg-options']
                 + ONE_EPOCH + data_options(folder_data))
    return tmp, with_hook, str(no_hook)


def test_tool_output_equals_hook_output(trained):
    tmp, cfg, _ = trained
    hook_file = tmp / 'hook' / 'epoch_1_merged.pth'
    out = tmp / 'tool_from_hook_run.pth'
    log = run_tool([TOOL, cfg, str(tmp / 'hook' / 'epoch_1.pth'), str(out)])
    assert 'SSF on backbone merged' in log
    assert "type='VisionTransformer'" in log and 'vit-tiny_folder-cls.py' in log  # stock config
    expected, got = _load(hook_file), _load(out)
    assert list(got) == list(expected) == ['meta', 'state_dict']
    _assert_same_state(got['state_dict'], expected['state_dict'])
    assert got['meta'] == expected['meta']
    assert got['meta']['source_checkpoint'] == 'epoch_1.pth'


def test_checkpoint_trained_without_hook(trained, folder_data):
    tmp, _, no_hook = trained
    ckpt = tmp / 'nohook' / 'epoch_1.pth'
    assert not (tmp / 'nohook' / 'epoch_1_merged.pth').exists()
    out = tmp / 'merged_nohook.pth'
    run_tool([TOOL, no_hook, str(ckpt), str(out)])
    merged = _load(out)
    assert merged['meta']['mmssf']['methods']['backbone']['type'] == 'SSF'
    # same seed, same data: the run with the hook wrote the same merged weights
    _assert_same_state(merged['state_dict'], _load(tmp / 'hook' / 'epoch_1_merged.pth')['state_dict'])

    # the stock model (no mmssf in its config) takes it strictly
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmpretrain')
    stock = MODELS.build(Config.fromfile(STOCK).model)
    assert not any('ssf_' in k for k in merged['state_dict'])
    stock.load_state_dict(merged['state_dict'], strict=True)

    # and evaluates it (no mmssf imported) exactly as the tuned config evaluates X.pth
    opts = data_options(folder_data)
    run_tool(['tools/test.py', no_hook, str(ckpt), '--work-dir', str(tmp / 't1'),
              '--out', str(tmp / 'tuned.json'), '--cfg-options'] + opts)
    run_tool(['tools/misc/eval_stock.py', STOCK, str(out), '--work-dir', str(tmp / 't2'),
              '--out', str(tmp / 'stock.json'), '--cfg-options'] + opts)
    tuned, stock_metrics = read_json(tmp / 'tuned.json'), read_json(tmp / 'stock.json')
    assert tuned and tuned == pytest.approx(stock_metrics, abs=1e-6)


def test_checkpoint_of_another_method_is_refused(trained, tmp_path):
    tmp, _, _ = trained
    lora = write_peft_config(tmp_path / 'lora.py', STOCK, 'VisionTransformer',
                             dict(type='LoRA', r=2))
    with pytest.raises(AssertionError) as err:
        run_tool([TOOL, lora, str(tmp / 'hook' / 'epoch_1.pth'), str(tmp_path / 'x.pth')])
    message = str(err.value)
    assert 'SSF on backbone' in message and 'LoRA on backbone' in message
    assert not (tmp_path / 'x.pth').exists()


@pytest.mark.parametrize('peft', [dict(type='Adapter', r=4), dict(type='VPTDeep', num_prompts=2)])
def test_unmergeable_method_exits_with_reason(tmp_path, peft):
    from mmengine.config import Config
    cfg_path = write_peft_config(tmp_path / 'tuned.py', STOCK, 'VisionTransformer', peft)
    model = _tool_module().build_model(Config.fromfile(cfg_path))
    ckpt = tmp_path / 'epoch_1.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': model.state_dict()}, ckpt)
    with pytest.raises(AssertionError) as err:
        run_tool([TOOL, cfg_path, str(ckpt), str(tmp_path / 'merged.pth')])
    message = str(err.value)
    name = 'Adapter' if peft['type'] == 'Adapter' else 'VPT'
    assert 'failed (1)' in message and 'cannot merge' in message and name in message
    assert not (tmp_path / 'merged.pth').exists()


def test_stock_backbone_config():
    tool = _tool_module()
    peft_cfg = dict(type='mmssf.PeftBackbone', stock_type='mmdet.SwinTransformer',
                    peft=dict(type='SSF'), peft_checkpoint='p.pth', embed_dims=32, depths=(2, 2))
    assert tool.stock_backbone(peft_cfg) == dict(type='mmdet.SwinTransformer', embed_dims=32,
                                                 depths=(2, 2))
    found = tool.peft_backbones(dict(type='X', backbone=peft_cfg, neck=dict(type='FPN')))
    assert [path for path, _ in found] == [('backbone', )]
