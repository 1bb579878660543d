"""Checkpoints that do not fit are errors at the Runner level, not warnings.

Through ``tools/train.py`` / ``tools/test.py`` (which add ``mmssf.CheckpointCheckHook``): a PEFT
checkpoint loaded (``load_from`` / ``--resume`` / test) into a config tuned with another method
fails naming both methods; a checkpoint whose keys do not fit fails listing the missing,
unexpected and mis-shaped keys, where mmengine would only warn and train on random weights.
A stock / merged checkpoint may still start tuning (``load_from``), and ``allow_mismatch`` accepts
the misfits a user expects.
"""
import argparse
import os.path as osp

import pytest
import torch

from conftest import build_backbone
from runner_utils import CONFIGS, data_options, run_tool, write_peft_config

STOCK = osp.join(CONFIGS, 'vit-tiny_folder-cls.py')
ONE_EPOCH = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1']


@pytest.fixture(scope='module')
def ssf_run(tmp_path_factory):
    """One epoch of SSF on the tiny ViT classifier: epoch_1.pth and epoch_1_merged.pth."""
    from mmssf.datasets.image_folder import make_image_folder
    tmp = tmp_path_factory.mktemp('ckpt_errors')
    data = make_image_folder(str(tmp / 'folder'), per_class=2) + '/'
    cfg = write_peft_config(tmp / 'ssf.py', STOCK, 'VisionTransformer', dict(type='SSF'))
    run_tool(['tools/train.py', cfg, '--work-dir', str(tmp / 'ssf'), '--cfg-options']
             + ONE_EPOCH + data_options(data))
    return dict(tmp=tmp, data=data, cfg=cfg, ckpt=str(tmp / 'ssf' / 'epoch_1.pth'),
                merged=str(tmp / 'ssf' / 'epoch_1_merged.pth'))


def _fails(args):
    with pytest.raises(AssertionError) as err:
        run_tool(args)
    return str(err.value)


def _train(run, cfg, work, *extra):
    return ['tools/train.py', cfg, '--work-dir', str(run['tmp'] / work)] + list(extra) + \
        ['--cfg-options'] + ONE_EPOCH + data_options(run['data'])


@pytest.fixture(scope='module')
def lora_cfg(ssf_run):
    return write_peft_config(ssf_run['tmp'] / 'lora.py', STOCK, 'VisionTransformer',
                             dict(type='LoRA', r=2))


def test_checkpoint_records_methods(ssf_run):
    import mmssf  # noqa: F401  (weights_only loading of Runner checkpoints)
    meta = torch.load(ssf_run['ckpt'], map_location='cpu', weights_only=True)['meta']
    assert meta['mmssf']['methods'] == {'backbone': {'type': 'SSF', 'targets': None}}


@pytest.mark.parametrize('how', ['load_from', 'resume'])
def test_other_method_names_both(ssf_run, lora_cfg, how):
    extra = (['--resume', ssf_run['ckpt']] if how == 'resume' else [])
    args = _train(ssf_run, lora_cfg, f'lora_{how}', *extra)
    if how == 'load_from':
        args.append(f'load_from={ssf_run["ckpt"]}')
    message = _fails(args)
    assert 'tools/train.py: mmssf: cannot' in message  # (the message, not a traceback)
    assert 'trained with SSF on backbone' in message and 'tunes with LoRA on backbone' in message
    assert ssf_run['ckpt'] in message
    assert not osp.exists(ssf_run['tmp'] / f'lora_{how}' / 'epoch_1.pth')


def test_test_tool_refuses_other_method(ssf_run, lora_cfg):
    message = _fails(['tools/test.py', lora_cfg, ssf_run['ckpt'], '--work-dir',
                      str(ssf_run['tmp'] / 't_lora'), '--cfg-options'] + data_options(ssf_run['data']))
    assert 'trained with SSF on backbone' in message and 'LoRA on backbone' in message


def test_peft_checkpoint_into_stock_config(ssf_run):
    message = _fails(['tools/test.py', STOCK, ssf_run['ckpt'], '--work-dir',
                      str(ssf_run['tmp'] / 't_stock'), '--cfg-options'] + data_options(ssf_run['data']))
    assert 'trained with SSF on backbone' in message and 'no PEFT method' in message
    assert 'X_merged.pth' in message


def test_misfitting_keys_are_listed(ssf_run):
    merged = torch.load(ssf_run['merged'], map_location='cpu', weights_only=True)
    state = dict(merged['state_dict'])
    del state['backbone.layers.1.ln2.bias']
    state['backbone.extra.weight'] = torch.zeros(3)
    width = state['head.layers.head.weight'].shape[1]
    state['head.layers.head.weight'] = torch.zeros(5, width)  # a head for another number of classes
    bad = ssf_run['tmp'] / 'misfit.pth'
    torch.save({'state_dict': state}, bad)
    message = _fails(_train(ssf_run, STOCK, 'misfit') + [f'load_from={bad}'])
    assert 'does not fit the model' in message
    assert 'missing in the checkpoint (1): backbone.layers.1.ln2.bias' in message
    assert 'unexpected, not in the model (1): backbone.extra.weight' in message
    assert (f'shape mismatch (1): head.layers.head.weight (checkpoint torch.Size([5, {width}]), '
            f'model torch.Size([3, {width}]))') in message
    # how to accept exactly these misfits on purpose: regexes computed from the keys
    option = ('checkpoint_allow_mismatch=[^backbone\\.extra\\.,^backbone\\.layers\\.1\\.ln2\\.,'
              '^head\\.layers\\.head\\.]')
    assert f'--cfg-options "{option}"' in message

    # the user says which misfits are expected (the option as printed): training goes on
    log = run_tool(_train(ssf_run, STOCK, 'allowed') + [f'load_from={bad}', option])
    assert osp.isfile(ssf_run['tmp'] / 'allowed' / 'epoch_1.pth') and 'Load checkpoint' in log


def test_stock_checkpoint_starts_tuning_but_cannot_resume(ssf_run, lora_cfg):
    # load_from a merged (stock) checkpoint into another method's config: tuning starts from it
    log = run_tool(_train(ssf_run, lora_cfg, 'lora_from_merged') + [f'load_from={ssf_run["merged"]}'])
    assert 'holds no PEFT tensors' in log and 'PEFT tensors start from their initial values' in log
    assert 'missing keys in source state_dict' not in log  # (one line, not mmengine's key list)
    assert osp.isfile(ssf_run['tmp'] / 'lora_from_merged' / 'epoch_1.pth')
    # --resume continues a run: the PEFT tensors must be in the file
    message = _fails(_train(ssf_run, ssf_run['cfg'], 'resume_merged', '--resume', ssf_run['merged']))
    assert 'cannot resume from' in message and 'this is a merged / stock checkpoint' in message
    assert f'pass the tuned X.pth (here: {ssf_run["ckpt"]}, the file it was merged from)' in message
    assert 'use load_from instead' in message


# ----------------------------------------------------------------------------- in process
def _tuned(peft):
    from mmssf.peft import apply_peft
    model, _ = build_backbone('mmpretrain_vit')
    apply_peft(model, peft)
    return model


def test_rules_in_process():
    from mmssf.engine import CheckpointMismatchError
    from mmssf.engine.checkpoint_check import check_checkpoint
    ssf = _tuned(dict(type='SSF'))
    ckpt = {'meta': {'mmssf': {'methods': {'<root>': {'type': 'SSF'}}}},
            'state_dict': {'module.' + k: v for k, v in ssf.state_dict().items()}}  # DDP prefix
    assert check_checkpoint(_tuned(dict(type='SSF')), ckpt, resume=True)['initial_peft'] == []

    # BitFit and linear probing add no tensors: the keys fit, only the recorded methods differ
    bitfit, linear = _tuned(dict(type='BitFit')), _tuned(dict(type='LinearProbe'))
    bitfit_ckpt = {'meta': {'mmssf': {'methods': {'<root>': {'type': 'BitFit'}}}},
                   'state_dict': bitfit.state_dict()}
    check_checkpoint(linear, bitfit_ckpt)  # load_from: a full set of weights, fine
    with pytest.raises(CheckpointMismatchError, match='trained with BitFit on <root>, but this '
                                                      'config tunes with LinearProbe on <root>'):
        check_checkpoint(linear, bitfit_ckpt, resume=True)

    # no meta (a checkpoint from elsewhere): the keys still tell
    with pytest.raises(CheckpointMismatchError, match=r'unexpected keys are RLRR/SSF tensors but this '
                                                      r'config tunes with LoRA'):
        check_checkpoint(_tuned(dict(type='LoRA', r=2)), {'state_dict': ssf.state_dict()})

    # a partial PEFT state is no stock checkpoint: the missing PEFT keys are errors
    partial = {k: v for k, v in ssf.state_dict().items() if not k.startswith('layers.1.')
               or 'ssf_' not in k}
    with pytest.raises(CheckpointMismatchError, match=r'missing in the checkpoint \(\d+\): '
                                                      r'layers\.1\..*ssf_'):
        check_checkpoint(_tuned(dict(type='SSF')), {'state_dict': partial})

    # a stock checkpoint starts tuning (load_from); the merge tool has nothing to merge in it
    stock, _ = build_backbone('mmpretrain_vit')
    report = check_checkpoint(_tuned(dict(type='SSF')), {'state_dict': stock.state_dict()})
    assert report['initial_peft'] and all('ssf_' in k for k in report['initial_peft'])
    with pytest.raises(CheckpointMismatchError, match='cannot merge .* nothing to merge'):
        check_checkpoint(_tuned(dict(type='SSF')), {'state_dict': stock.state_dict()},
                         purpose='merge')

    # a stock run's resumable checkpoint: starts tuning (load_from), is not resumed by one
    stock_run = {'meta': {'mmssf': {'methods': {}}}, 'state_dict': stock.state_dict()}
    check_checkpoint(_tuned(dict(type='SSF')), stock_run)
    with pytest.raises(CheckpointMismatchError, match=r'trained with no PEFT method .* this config '
                                                      r'tunes with SSF on <root>\. --resume continues'):
        check_checkpoint(_tuned(dict(type='SSF')), stock_run, resume=True)


def test_batchnorm_counter_may_be_missing():
    from torch import nn

    from mmssf.engine.checkpoint_check import check_checkpoint
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    state = {k: v for k, v in model.state_dict().items() if 'num_batches_tracked' not in k}
    check_checkpoint(model, {'state_dict': state})


def test_add_checkpoint_check_once():
    from mmengine.config import Config

    from mmssf.engine.checkpoint_check import add_checkpoint_check
    cfg = Config(dict(custom_hooks=[dict(type='mmssf.ReparamCheckpointHook')]))
    add_checkpoint_check(cfg)
    add_checkpoint_check(cfg)
    assert [h['type'] for h in cfg.custom_hooks] == ['mmssf.ReparamCheckpointHook',
                                                     'mmssf.CheckpointCheckHook']
    own = Config(dict(custom_hooks=[dict(type='mmssf.CheckpointCheckHook', allow_mismatch=['x'])]))
    add_checkpoint_check(own)
    assert len(own.custom_hooks) == 1 and own.custom_hooks[0]['allow_mismatch'] == ['x']


# ------------------------------------------------- merged / stock checkpoints (in process)
def _merged_beside_tuned(tmp_path, model):
    """``X.pth`` and its ``X_merged.pth`` (the hook's format) of a tuned ``model``, in tmp."""
    from mmssf.peft.merged_checkpoint import build_merged_checkpoint
    from mmssf.peft.model_merge import peft_summary
    tuned = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'mmssf': peft_summary(model)}}, tuned)
    return str(tuned), build_merged_checkpoint(model, source='epoch_1.pth')


@pytest.mark.parametrize('purpose', ['test', 'resume', 'merge'])
def test_merged_checkpoint_only_starts_tuning(tmp_path, purpose):
    """The silent wrong result: an ``X_merged.pth`` with the tuned config would apply SSF again
    on weights that already hold it. Only ``load_from`` (start tuning) takes it."""
    from mmssf.engine.checkpoint_check import StockCheckpointError, check_checkpoint
    model = _tuned(dict(type='SSF'))
    tuned, merged = _merged_beside_tuned(tmp_path, model)
    source = str(tmp_path / 'epoch_1_merged.pth')
    config = write_peft_config(tmp_path / 'ssf.py', STOCK, 'VisionTransformer', dict(type='SSF'))
    with pytest.raises(StockCheckpointError) as err:
        check_checkpoint(_tuned(dict(type='SSF')), merged, source=source, purpose=purpose,
                         config=config)
    message = str(err.value)
    assert 'this is a merged / stock checkpoint' in message
    assert f'the tuned X.pth (here: {tuned}, the file it was merged from)' in message
    n_peft = sum('ssf_' in k for k in model.state_dict())
    assert f'none of the {n_peft} PEFT tensors of this config (SSF on <root>)' in message
    if purpose == 'resume':
        assert f'use load_from instead (--cfg-options load_from={source})' in message
    else:  # the command to run instead, with the tuned config's stock _base_
        assert f'tools/misc/eval_stock.py {STOCK} {source}' in message
    # load_from: tuning starts from the merged weights, the PEFT tensors from their init
    report = check_checkpoint(_tuned(dict(type='SSF')), merged, source=source)
    assert sorted(report['initial_peft']) == sorted(k for k in model.state_dict() if 'ssf_' in k)


def test_stock_checkpoint_without_meta_is_refused_for_testing():
    from mmssf.engine.checkpoint_check import StockCheckpointError, check_checkpoint
    stock, _ = build_backbone('mmpretrain_vit')
    with pytest.raises(StockCheckpointError, match=r'cannot test stock\.pth with this tuned config: '
                                                   r'this is a merged / stock checkpoint.*'
                                                   r'eval_stock\.py STOCK_CONFIG stock\.pth.*'
                                                   r'or pass the tuned X\.pth\.$'):
        check_checkpoint(_tuned(dict(type='SSF')), {'state_dict': stock.state_dict()},
                         source='stock.pth', purpose='test')
    # methods adding no tensors (BitFit, linear probing) have nothing to lose: a full state fits
    check_checkpoint(_tuned(dict(type='BitFit')), {'state_dict': stock.state_dict()},
                     purpose='test')
    with pytest.raises(ValueError, match="purpose='eval'; expected one of"):
        check_checkpoint(stock, {'state_dict': stock.state_dict()}, purpose='eval')


def test_hook_purpose_follows_the_runner():
    """Runner.train builds its train loop before loading (load_from / resume); Runner.test and
    Runner.val do not (test)."""
    from types import SimpleNamespace

    from mmengine.runner.base_loop import BaseLoop

    from mmssf.engine.checkpoint_check import _purpose

    class Loop(BaseLoop):
        def run(self):
            pass

    built = Loop.__new__(Loop)
    assert _purpose(SimpleNamespace(_resume=False, _train_loop=built)) == 'load_from'
    assert _purpose(SimpleNamespace(_resume=True, _train_loop=built)) == 'resume'
    assert _purpose(SimpleNamespace(_resume=False, _train_loop=dict(max_epochs=1))) == 'test'
    assert _purpose(SimpleNamespace(_resume=False, _train_loop=None)) == 'test'


def test_load_from_stock_lists_no_missing_peft_keys(tmp_path):
    """load_from a stock checkpoint: the hook puts the initial PEFT values into the loaded state
    dict, so mmengine's load (strict here: it would raise on a missing key) finds every key and
    the PEFT tensors keep their initial values."""
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    from mmssf.engine.checkpoint_check import check_checkpoint, keep_initial_values
    stock, _ = build_backbone('mmpretrain_vit', seed=3)
    model = _tuned(dict(type='SSF'))
    initial = {k: v.clone() for k, v in model.state_dict().items() if 'ssf_' in k}
    checkpoint = {'state_dict': stock.state_dict()}
    report = check_checkpoint(model, checkpoint, source='stock.pth')
    keep_initial_values(model, checkpoint, report['initial_peft'])
    _load_checkpoint_to_model(model, checkpoint, strict=True)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in initial.items())
    assert all(torch.equal(state[k], v) for k, v in stock.state_dict().items())


# ------------------------------------------------------- allow_mismatch, computed and settable
def _detector(num_classes):
    """The head modules of a Mask R-CNN whose shapes follow the number of classes."""
    from torch import nn
    return nn.ModuleDict(dict(
        backbone=nn.Linear(4, 4),
        roi_head=nn.ModuleDict(dict(
            bbox_head=nn.ModuleDict(dict(fc_cls=nn.Linear(8, num_classes + 1),
                                         fc_reg=nn.Linear(8, 4 * num_classes))),
            mask_head=nn.ModuleDict(dict(conv_logits=nn.Conv2d(8, num_classes, 1)))))))


def test_suggested_allow_mismatch_covers_every_misfit():
    """A COCO detector fine-tuned on 3 classes: the suggestion covers the mask head too (it was
    a fixed ``head\\.fc`` that did not), and with it the load goes through."""
    from mmssf.engine import CheckpointMismatchError
    from mmssf.engine.checkpoint_check import check_checkpoint, mismatch_patterns
    coco = {'state_dict': _detector(80).state_dict()}
    with pytest.raises(CheckpointMismatchError) as err:
        check_checkpoint(_detector(3), coco, allow_mismatch=[r'head\.fc_cls'])
    patterns = [r'^roi_head\.bbox_head\.fc_reg\.', r'^roi_head\.mask_head\.conv_logits\.']
    assert f'"checkpoint_allow_mismatch=[{",".join(patterns)}]"' in str(err.value)
    assert "allow_mismatch now: ['head\\\\.fc_cls'], which does not cover these keys" \
        in str(err.value)
    check_checkpoint(_detector(3), coco, allow_mismatch=[r'head\.fc_cls'] + patterns)

    keys = ['cls_token'] + [f'layers.{i}.ffn.fc{j}.weight' for i in range(20) for j in (1, 2)]
    assert mismatch_patterns(keys) == [r'^layers\.', r'^cls_token$']  # (past 12: the parents)


def test_checkpoint_allow_mismatch_from_the_command_line():
    from mmengine.config import Config, DictAction

    from mmssf.engine.checkpoint_check import CheckpointCheckHook, add_checkpoint_check
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    option = r'checkpoint_allow_mismatch=[^roi_head\.bbox_head\.,^roi_head\.mask_head\.conv_logits\.]'
    cfg = Config(dict(custom_hooks=[dict(type='mmssf.CheckpointCheckHook', allow_mismatch='x')]))
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', option]).cfg_options)
    add_checkpoint_check(cfg)
    assert cfg.custom_hooks[0]['allow_mismatch'] == [
        'x', r'^roi_head\.bbox_head\.', r'^roi_head\.mask_head\.conv_logits\.']
    fresh = Config(dict(checkpoint_allow_mismatch=r'^head\.'))  # (one regex, no brackets)
    add_checkpoint_check(fresh)
    assert fresh.custom_hooks == [dict(type='mmssf.CheckpointCheckHook',
                                       allow_mismatch=[r'^head\.'])]
    with pytest.raises(ValueError, match=r"'\^head\\\\.\(' is not a valid regex"):
        add_checkpoint_check(Config(dict(checkpoint_allow_mismatch=r'^head\.(')))
    with pytest.raises(TypeError, match='expected regexes'):
        CheckpointCheckHook(allow_mismatch=[('a', 'b')])
