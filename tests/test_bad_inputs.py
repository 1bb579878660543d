"""Bad input gets an error naming the problem and the file: SPT allocation files (truncated,
unknown module, duplicate indices, a structured entry on a bias, a damaged index file), unsafe /
empty / text files given to ``peft_checkpoint=``, the converters and ``eval_stock.py``;
``merge_peft.py`` with a relative config path from another working directory."""
import importlib.util
import json
import os
import os.path as osp
import shutil

import pytest
import torch

from conftest import build_backbone
from runner_utils import CONFIGS, ROOT, data_options, run_tool, write_peft_config

from mmssf.peft import apply_peft
from mmssf.peft.spt import allocate, scored_parameters


def random_scores(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen) ** 4 for n, p in scored_parameters(model).items()}


# -- SPT allocation files -----------------------------------------------------------------------
@pytest.fixture
def allocation(tmp_path):
    model, _ = build_backbone('mmpretrain_vit')
    path = allocate(random_scores(model), model, 2000, kind='lora', rank=2).save(
        str(tmp_path / 'spt'))
    return path


def _apply(path):
    apply_peft(build_backbone('mmpretrain_vit')[0], dict(type='SPTLoRA', allocation=path))


def _edit(path, change):
    info = json.loads(open(path).read())
    change(info)
    with open(path, 'w') as f:
        json.dump(info, f)


def test_valid_allocation_applies(allocation):
    _apply(allocation)


def test_truncated_allocation_json(allocation):
    text = open(allocation).read()
    with open(allocation, 'w') as f:
        f.write(text[:len(text) // 2])
    with pytest.raises(ValueError, match=f'SPT allocation {allocation} is not valid JSON.*'
                                         f'truncated.*spt_sensitivity.py'):
        _apply(allocation)


def test_unknown_structured_module(allocation):
    _edit(allocation, lambda info: info['structured'].update(
        {'layers.7.attn.qkv': dict(param='weight', params=10, sensitive=1)}))
    with pytest.raises(ValueError, match=f"{allocation}: structured entry 'layers.7.attn.qkv' is "
                                         f"not a module of this VisionTransformer"):
        _apply(allocation)


def test_structured_entry_on_a_bias(allocation):
    _edit(allocation, lambda info: info['structured'].update(
        {'layers.0.attn.qkv': dict(param='bias', params=10, sensitive=1)}))
    with pytest.raises(ValueError, match=r"structured entry 'layers.0.attn.qkv' \(param 'bias'\) "
                                         r"cannot take a lora module.*biases"):
        _apply(allocation)


def test_structured_entry_on_a_norm(allocation):
    _edit(allocation, lambda info: info['structured'].update(
        {'layers.0.ln1': dict(param='weight', params=10, sensitive=1)}))
    with pytest.raises(ValueError, match="structured entry 'layers.0.ln1'.*cannot take"):
        _apply(allocation)


def _edit_indices(allocation, change):
    index_path = osp.join(osp.dirname(allocation), 'allocation_indices.pth')
    indices = torch.load(index_path, weights_only=True)
    name = change(indices)
    torch.save(indices, index_path)
    return index_path, name


def test_duplicate_indices(allocation):
    def duplicate(indices):
        name = next(k for k, v in indices.items() if v.numel() >= 2)
        indices[name][1] = indices[name][0]
        return name
    index_path, name = _edit_indices(allocation, duplicate)
    with pytest.raises(ValueError, match=f"{index_path}: 1 duplicate indices for '{name}'"):
        _apply(allocation)


def test_index_outside_the_parameter(allocation):
    def out_of_range(indices):
        name = next(iter(indices))
        indices[name][-1] = 10 ** 9
        return name
    _, name = _edit_indices(allocation, out_of_range)
    with pytest.raises(ValueError, match=f"{allocation}: indices of '{name}' out of range"):
        _apply(allocation)


def test_unknown_unstructured_parameter(allocation):
    index_path = osp.join(osp.dirname(allocation), 'allocation_indices.pth')
    indices = torch.load(index_path, weights_only=True)
    indices['layers.9.ffn.x.weight'] = torch.tensor([0, 1])
    torch.save(indices, index_path)
    _edit(allocation, lambda info: info['unstructured'].update({'layers.9.ffn.x.weight': 2}))
    with pytest.raises(ValueError, match="unstructured entry 'layers.9.ffn.x.weight' is not a "
                                         "tunable parameter"):
        _apply(allocation)


def test_damaged_index_file(allocation):
    index_path = osp.join(osp.dirname(allocation), 'allocation_indices.pth')
    data = open(index_path, 'rb').read()
    with open(index_path, 'wb') as f:
        f.write(data[:len(data) // 3])
    with pytest.raises(RuntimeError, match=f'cannot load {index_path}: it is truncated'):
        _apply(allocation)


# -- files given to peft_checkpoint=, the converters, eval_stock --------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def _bad_file(tmp_path, kind):
    path = tmp_path / f'{kind}.pth'
    if kind == 'unsafe':
        torch.save({'state_dict': {}, 'x': _RunsCode()}, path)
    elif kind == 'empty':
        path.write_bytes(b'')
    else:
        path.write_text('not a checkpoint\n')
    return path


EXPECTED = {'unsafe': 'refused to load {}', 'empty': 'cannot load {}: it is empty',
            'text': 'cannot load {}: it is text'}


@pytest.mark.parametrize('kind', sorted(EXPECTED))
def test_peft_checkpoint_errors_name_the_file(tmp_path, kind):
    from mmssf.models.peft_backbone import PeftBackbone  # noqa: F401
    from mmssf.peft import load_peft
    path = _bad_file(tmp_path, kind)
    backbone = build_backbone('mmpretrain_vit')[0]
    apply_peft(backbone, dict(type='SSF'))
    with pytest.raises(Exception) as err:
        load_peft(backbone, str(path))
    assert EXPECTED[kind].format(path) in str(err.value)


def _tool(path):
    spec = importlib.util.spec_from_file_location(osp.basename(path)[:-3], osp.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('kind', sorted(EXPECTED))
@pytest.mark.parametrize('tool', ['vit_timm_to_mm', 'swin_official_to_mm'])
def test_converters_refuse_bad_files_naming_them(tmp_path, kind, tool):
    path = _bad_file(tmp_path, kind)
    main = _tool(f'tools/model_converters/{tool}.py').main
    with pytest.raises(SystemExit) as err:
        main([str(path), str(tmp_path / 'out.pth')]
             + (['--target', 'mmpretrain'] if tool == 'vit_timm_to_mm' else []))
    assert EXPECTED[kind].format(path) in str(err.value.code)
    assert not (tmp_path / 'out.pth').exists()


EVAL_STOCK = {'unsafe': 'cannot load {}: it holds objects that are neither tensors',
              'empty': 'cannot load {}: it is empty',
              'text': "cannot load {}: it is not a PyTorch checkpoint (starts with b'not '"}


@pytest.mark.parametrize('kind', sorted(EVAL_STOCK))
def test_eval_stock_explains_bad_files(tmp_path, kind):
    """eval_stock.py never imports mmssf: its own words, for the errors torch raised."""
    path = _bad_file(tmp_path, kind)
    try:
        torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001
        reason = _tool('tools/misc/eval_stock.py').why_unloadable(str(path), err)
    assert f'cannot load {path}: {reason}'.startswith(EVAL_STOCK[kind].format(path))


def test_eval_stock_exits_naming_an_unsafe_file(tmp_path):
    path = _bad_file(tmp_path, 'unsafe')
    with pytest.raises(AssertionError) as err:
        run_tool(['tools/misc/eval_stock.py', osp.join(CONFIGS, 'vit-tiny_folder-cls.py'),
                  str(path), '--work-dir', str(tmp_path / 'w')])
    assert EVAL_STOCK['unsafe'].format(path) in str(err.value)
    assert 'Traceback' not in str(err.value)


# -- merge_peft.py with relative paths ----------------------------------------------------------
def test_merge_tool_with_relative_config_path_from_another_folder(tmp_path):
    from mmssf.datasets.image_folder import make_image_folder
    data = make_image_folder(str(tmp_path / 'data'), per_class=1) + '/'
    cfg_dir = tmp_path / 'work_ux' / 'cfg'
    cfg_dir.mkdir(parents=True)
    stock = cfg_dir / 'stock.py'  # a stock config beside the tuned one (a local _base_)
    shutil.copy(osp.join(CONFIGS, 'vit-tiny_folder-cls.py'), stock)
    tuned = write_peft_config(cfg_dir / 'ssf.py', './stock.py', 'VisionTransformer',
                              dict(type='SSF'))
    run_tool(['tools/train.py', tuned, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
              'train_cfg.max_epochs=1', 'train_cfg.val_interval=1'] + data_options(data))
    other = tmp_path / 'elsewhere'
    other.mkdir()
    rel_cfg = osp.relpath(tuned, other)  # ../work_ux/cfg/ssf.py
    log = run_tool([osp.join(ROOT, 'tools/model_converters/merge_peft.py'), rel_cfg,
                    osp.relpath(tmp_path / 'w' / 'epoch_1.pth', other), 'merged.pth'], cwd=other)
    assert 'could not read _base_' not in log
    assert "the stock _base_ './stock.py' has exactly this backbone" in log
    assert str(stock) in log
    assert (other / 'merged.pth').is_file()
