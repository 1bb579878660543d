"""Starting without a network or from a model-zoo checkpoint: a failed weight download names
the config key holding its URL and the option pointing it at a local file; a ``load_from``
that does not exist is refused before the datasets load."""
import os.path as osp

import pytest

from runner_utils import CONFIGS, data_options, run_tool

STOCK = osp.join(CONFIGS, 'vit-tiny_folder-cls.py')
# nothing listens on the discard port: the connection is refused at once, as offline
URL = 'http://127.0.0.1:9/vit-tiny_in1k.pth'


def _fails(args):
    with pytest.raises(AssertionError) as err:
        run_tool(args)
    return str(err.value)


def test_config_keys_holding_the_url():
    from mmengine.config import Config

    from mmssf.download import WeightDownloadError, keys_holding, with_config_keys
    cfg = Config(dict(model=dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=URL)),
                                 neck=[dict(init_cfg=dict(checkpoint=URL))]), load_from=None))
    assert keys_holding(cfg.to_dict(), URL) == ['model.backbone.init_cfg.checkpoint',
                                                'model.neck.0.init_cfg.checkpoint']
    err = WeightDownloadError(URL, 'generic', reason='URLError: refused')
    message = with_config_keys(err, cfg)
    assert message.startswith(f'cannot download {URL} (URLError: refused)')
    assert ('--cfg-options model.backbone.init_cfg.checkpoint=/path/to/vit-tiny_in1k.pth '
            'model.neck.0.init_cfg.checkpoint=/path/to/vit-tiny_in1k.pth') in message
    assert 'model.backbone.init_cfg=None' in message
    assert with_config_keys(err, Config(dict(model=dict()))) == 'generic'  # (no key holds it)


def test_offline_stock_config_names_the_option(tmp_path, folder_data):
    config = tmp_path / 'pretrained.py'
    config.write_text(f'_base_ = {STOCK!r}\nmodel = dict(backbone=dict(init_cfg=dict(_delete_=True, '
                      f"type='Pretrained', checkpoint={URL!r})))\n")
    message = _fails(['tools/train.py', str(config), '--work-dir', str(tmp_path / 'w'),
                      '--cfg-options', 'train_cfg.max_epochs=1'] + data_options(folder_data))
    assert f'tools/train.py: cannot download {URL} (URLError:' in message
    assert ('point model.backbone.init_cfg.checkpoint at the local copy: --cfg-options '
            'model.backbone.init_cfg.checkpoint=/path/to/vit-tiny_in1k.pth') in message
    assert 'Traceback' not in message
    assert 'pkg_resources is deprecated' not in message  # (mmpretrain:: base lookups: silenced)


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_missing_load_from_is_refused_before_the_data(tmp_path, tool):
    missing = tmp_path / 'zoo' / 'mask-rcnn_coco.pth'
    (tmp_path / 'zoo').mkdir()
    (tmp_path / 'zoo' / 'mask-rcnn_swin-t_coco.pth').write_bytes(b'')
    # the data root does not exist either: refusing after loading the datasets would say that
    data = data_options(str(tmp_path / 'no_data') + '/')
    if tool == 'train':
        args = ['tools/train.py', STOCK, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                f'load_from={missing}'] + data
        what = 'load_from'
    else:
        args = ['tools/test.py', STOCK, str(missing), '--work-dir', str(tmp_path / 'w'),
                '--cfg-options'] + data
        what = 'checkpoint'
    message = _fails(args).split(' failed (1):\n', 1)[1]  # (the output, not the command)
    assert f'tools/{tool}.py: {what} {missing}: no such file' in message
    assert f'.pth files in {tmp_path / "zoo"}: mask-rcnn_swin-t_coco.pth' in message
    assert 'no_data' not in message
