"""End to end through the mmengine Runner, from the stock configs shipped in mmdet / mmseg /
mmpretrain (``mmdet::`` / ``mmseg::`` / ``mmpretrain::`` inheritance, tiny dims by override), on
generated data: train a few iterations with a PEFT method, then check that ``X_merged.pth``
loads with ``weights_only=True`` and ``strict=True`` into the *stock* config's model in a process
that never imports mmssf, and that its metrics equal ``tools/test.py`` on the tuned config with the
resumable ``X.pth``. The tools run on ``pytest --device`` (cpu hides the GPUs; cuda lets
mmengine use them).
"""
import os.path as osp

import pytest
import torch

from mmssf.peft.registry_facts import methods_of_tensor
from runner_utils import CONFIGS, ROOT, data_options, read_json, run_tool, write_peft_config

FLOWS = {
    # name: (stock config, stock backbone type, peft, data kind, checkpoint name, extra options)
    'mask-rcnn_ssf': (osp.join(ROOT, 'configs/demo/mask-rcnn_swin-tiny_demo-coco.py'),
                      'SwinTransformer', dict(type='SSF'), 'coco', 'epoch_1.pth',
                      ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                       'default_hooks.checkpoint.interval=1']),
    'upernet_ssf': (osp.join(CONFIGS, 'upernet_swin-tiny_ade.py'), 'SwinTransformer',
                    dict(type='SSF'), 'ade', 'iter_2.pth', []),
    'upernet_dora': (osp.join(CONFIGS, 'upernet_swin-tiny_ade.py'), 'SwinTransformer',
                     dict(type='DoRA', r=4, targets=['qkv', 'proj', 'fc1', 'fc2']), 'ade',
                     'iter_2.pth', []),
    'setr_lora': (osp.join(CONFIGS, 'setr-pup_vit-tiny_ade.py'), 'VisionTransformer',
                  dict(type='LoRA', r=4, targets=['qkv', 'proj']), 'ade', 'iter_2.pth', []),
    # SPT: the allocation is computed first by spt_sensitivity.py on the same data ({tmp} below)
    'setr_spt-lora': (osp.join(CONFIGS, 'setr-pup_vit-tiny_ade.py'), 'VisionTransformer',
                      dict(type='SPTLoRA', allocation='{tmp}/spt/allocation.json'), 'ade',
                      'iter_2.pth', []),
    'vit-cls_ssf': (osp.join(CONFIGS, 'vit-tiny_folder-cls.py'), 'VisionTransformer',
                    dict(type='SSF'), 'folder', 'epoch_2.pth', []),
    'swin-cls_rlrr': (osp.join(CONFIGS, 'swin-tiny_folder-cls.py'), 'SwinTransformer',
                      dict(type='RLRR', init_std=0.1), 'folder', 'epoch_2.pth', []),
}


@pytest.fixture(scope='session')
def datasets(tmp_path_factory):
    from mmssf.datasets import make_ade20k, make_coco
    from mmssf.datasets.image_folder import make_image_folder
    root = tmp_path_factory.mktemp('data')
    return {
        'coco': make_coco(str(root / 'coco'), num_train=4, num_val=2) + '/',
        'ade': make_ade20k(str(root / 'ade'), num_train=4, num_val=2) + '/',
        'folder': make_image_folder(str(root / 'folder'), per_class=2) + '/',
    }


# every flow trains through the Runner (40-80 s each on 2 cores): the slow tier
@pytest.mark.slow
@pytest.mark.parametrize('flow', sorted(FLOWS))
def test_train_merge_and_stock_evaluation(tmp_path, datasets, flow, device_env):
    stock_cfg, stock_type, peft, kind, ckpt_name, extra = FLOWS[flow]
    opts = data_options(datasets[kind], coco=kind == 'coco') + extra
    peft = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in peft.items()}
    tuned_cfg = write_peft_config(tmp_path / f'{flow}.py', stock_cfg, stock_type, peft)
    work = tmp_path / 'work'
    if peft['type'].startswith('SPT'):
        log = run_tool(['tools/analysis_tools/spt_sensitivity.py', tuned_cfg, '--budget', '2k',
                        '--samples', '4', '--rank', '2', '--cfg-options'] + opts, env=device_env)
        assert 'budget asked 2,000 | met 2,000' in log
        assert osp.isfile(tmp_path / 'spt' / 'sensitivity_patterns.png')
    log = run_tool(['tools/train.py', tuned_cfg, '--work-dir', str(work), '--cfg-options'] + opts, env=device_env)
    assert 'trainable params:' in log

    ckpt = work / ckpt_name
    merged = work / ckpt_name.replace('.pth', '_merged.pth')
    assert ckpt.is_file() and merged.is_file()
    stock_ckpt = torch.load(merged, weights_only=True)
    assert not any(methods_of_tensor(k) for k in stock_ckpt['state_dict'])
    assert stock_ckpt['meta']['mmssf']['methods']['backbone']['type'] == peft['type']
    if peft['type'].startswith('SPT'):
        assert stock_ckpt['meta']['mmssf']['allocation']['backbone']['budget']['met'] == 2000

    run_tool(['tools/test.py', tuned_cfg, str(ckpt), '--work-dir', str(tmp_path / 't1'),
              '--out', str(tmp_path / 'tuned.json'), '--cfg-options'] + opts, env=device_env)
    run_tool(['tools/misc/eval_stock.py', stock_cfg, str(merged), '--work-dir', str(tmp_path / 't2'),
              '--out', str(tmp_path / 'stock.json'), '--cfg-options'] + opts, env=device_env)
    tuned, stock = read_json(tmp_path / 'tuned.json'), read_json(tmp_path / 'stock.json')
    assert tuned.keys() == stock.keys() and tuned
    for key in tuned:
        assert tuned[key] == pytest.approx(stock[key], abs=1e-6), key


@pytest.mark.slow
def test_mask_rcnn_mona_trains_and_evaluates_with_its_peft_state(tmp_path, datasets, device_env):
    """Mona (not mergeable) on the stock Mask R-CNN Swin-T: trains through ``tools/train.py``,
    the hook writes no ``_merged`` file and says why, the checkpoint holds the trained adapters
    under their declared prefix, and ``tools/test.py`` evaluates it with the tuned config."""
    stock_cfg = osp.join(ROOT, 'configs/demo/mask-rcnn_swin-tiny_demo-coco.py')
    opts = data_options(datasets['coco'], coco=True) + [
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1']
    tuned_cfg = write_peft_config(tmp_path / 'mona.py', stock_cfg, 'SwinTransformer',
                                  dict(type='Mona', r=8))
    work = tmp_path / 'work'
    log = run_tool(['tools/train.py', tuned_cfg, '--work-dir', str(work), '--cfg-options'] + opts, env=device_env)
    assert 'trainable params:' in log
    assert 'no _merged checkpoint: Mona cannot be merged' in log
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file() and not (work / 'epoch_1_merged.pth').exists()
    state = torch.load(ckpt, weights_only=True)['state_dict']
    mona = [k for k in state if '.mona_' in k]
    assert mona and all(methods_of_tensor(k) == 'Mona' for k in mona)
    gamma = state['backbone.stages.0.blocks.0.mona_attn_gamma']
    assert not torch.allclose(gamma, torch.full_like(gamma, 1e-6))  # trained
    run_tool(['tools/test.py', tuned_cfg, str(ckpt), '--work-dir', str(tmp_path / 't1'),
              '--out', str(tmp_path / 'tuned.json'), '--cfg-options'] + opts, env=device_env)
    assert read_json(tmp_path / 'tuned.json')
