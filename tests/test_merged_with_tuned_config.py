"""The silent wrong result of issue 22: ``X_merged.pth`` sits beside ``X.pth``; tested with the
*tuned* config, its PEFT tensors would start from their init and SSF would be applied a second
time on weights that already hold it, and ``tools/test.py`` exited 0. Through the real tools on
the ``make demo`` config: testing, ``--resume`` and ``merge_peft.py`` refuse the merged file
naming what to run instead; ``load_from`` (starting to tune from it) still works."""
import os.path as osp

import pytest

from runner_utils import ROOT, data_options, run_tool

TUNED = osp.join(ROOT, 'configs/demo/ssf_mask-rcnn_swin-tiny_demo-coco.py')
STOCK = osp.join(ROOT, 'configs/demo/mask-rcnn_swin-tiny_demo-coco.py')
ONE_EPOCH = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=10',
             'default_hooks.checkpoint.interval=1']


def _fails(args):
    with pytest.raises(AssertionError) as err:
        run_tool(args)
    return str(err.value)


@pytest.mark.slow
def test_merged_checkpoint_with_the_tuned_config(tmp_path):
    from mmssf.datasets import make_coco
    opts = data_options(make_coco(str(tmp_path / 'coco'), num_train=2, num_val=2) + '/', coco=True)
    work = tmp_path / 'ssf'
    run_tool(['tools/train.py', TUNED, '--work-dir', str(work), '--cfg-options'] + ONE_EPOCH + opts)
    tuned, merged = str(work / 'epoch_1.pth'), str(work / 'epoch_1_merged.pth')
    assert osp.isfile(tuned) and osp.isfile(merged)
    instead = f'or pass the tuned X.pth (here: {tuned}, the file it was merged from)'

    message = _fails(['tools/test.py', TUNED, merged, '--work-dir', str(tmp_path / 't'),
                      '--cfg-options'] + opts)
    assert 'tools/test.py: mmssf: cannot test' in message
    assert 'this is a merged / stock checkpoint' in message
    assert f'Test it with the stock config (tools/misc/eval_stock.py {STOCK} {merged}' in message
    assert instead in message
    assert 'Traceback' not in message

    message = _fails(['tools/train.py', TUNED, '--work-dir', str(tmp_path / 'r'), '--resume',
                      merged, '--cfg-options'] + ONE_EPOCH + opts)
    assert f'cannot resume from {merged}: this is a merged / stock checkpoint' in message
    assert instead.replace('or pass', 'pass') in message and 'use load_from instead' in message
    assert not osp.exists(tmp_path / 'r' / 'epoch_1.pth')

    out = tmp_path / 'twice_merged.pth'
    message = _fails(['tools/model_converters/merge_peft.py', TUNED, merged, str(out)])
    assert f'merge_peft: mmssf: cannot merge {merged}: this is a merged / stock checkpoint' \
        in message and 'nothing to merge' in message
    assert not out.exists()

    # load_from: tuning starts from the merged weights; one line, no list of "missing" keys
    log = run_tool(['tools/train.py', TUNED, '--work-dir', str(tmp_path / 'l'), '--cfg-options']
                   + ONE_EPOCH + opts + [f'load_from={merged}'])
    assert f'load_from {merged} holds no PEFT tensors' in log
    assert 'PEFT tensors start from their initial values' in log
    assert 'missing keys in source state_dict' not in log
    assert osp.isfile(tmp_path / 'l' / 'epoch_1.pth')
