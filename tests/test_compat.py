"""The stack fixes in mmssf.compat, each tested through the real flow it repairs."""
import os
import pickle

import pytest
import torch

from runner_utils import CONFIGS, data_options, run_tool, write_peft_config

CLS = os.path.join(CONFIGS, 'vit-tiny_folder-cls.py')


def _weights(path):
    return torch.load(path, weights_only=True)['state_dict']


@pytest.mark.slow
@pytest.mark.parametrize('peft', [None, dict(type='SSF')])
def test_resume_ends_with_same_weights(tmp_path, folder_data, peft):
    """Interrupted after epoch 1 and resumed == uninterrupted (CPU, fixed seed, torch >= 2.6)."""
    cfg = CLS if peft is None else write_peft_config(tmp_path / 'peft.py', CLS, 'VisionTransformer',
                                                      peft)
    full, part = tmp_path / 'full', tmp_path / 'part'
    run_tool(['tools/train.py', cfg, '--work-dir', str(full), '--cfg-options'] + data_options(folder_data))
    run_tool(['tools/train.py', cfg, '--work-dir', str(part), '--cfg-options', 'train_cfg.max_epochs=1']
             + data_options(folder_data))
    log = run_tool(['tools/train.py', cfg, '--work-dir', str(part), '--resume'] + ['--cfg-options']
                   + data_options(folder_data))
    assert 'resumed' in log.lower()
    a, b = _weights(full / 'epoch_2.pth'), _weights(part / 'epoch_2.pth')
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the first epoch's weights differ from the final ones: the resumed run really trained
    assert any(not torch.equal(a[k], _weights(part / 'epoch_1.pth')[k]) for k in a)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))  # unpickling would create a file


def _crafted_checkpoint(tmp_path):
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        torch.save({'state_dict': {'x': torch.zeros(1)}, 'payload': _RunsCode(str(marker))}, f)
    return path, marker


@pytest.mark.parametrize('how', ['load_from', 'init_cfg'])
def test_code_in_foreign_checkpoint_is_refused(tmp_path, folder_data, how):
    path, marker = _crafted_checkpoint(tmp_path)
    cfg, opts = CLS, [f'load_from={path}']
    if how == 'init_cfg':
        cfg, opts = str(tmp_path / 'pretrained.py'), []
        with open(cfg, 'w') as f:
            f.write(f'_base_ = {CLS!r}\nmodel = dict(backbone=dict(init_cfg=dict('
                    f'_delete_=True, type="Pretrained", checkpoint={str(path)!r})))\n')
    with pytest.raises(AssertionError) as err:
        run_tool(['tools/train.py', cfg, '--work-dir', str(tmp_path / 'w'), '--cfg-options']
                 + opts + data_options(folder_data) + ['train_cfg.max_epochs=1'])
    assert 'refused to load' in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ


def test_refusal_in_process(tmp_path):
    import mmssf  # noqa: F401
    from mmengine.runner import CheckpointLoader
    path, marker = _crafted_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match='refused to load'):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert not marker.exists()


def test_history_buffer_pickles_without_functions(tmp_path):
    import mmssf  # noqa: F401
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(2.0)
    buf.update(4.0)
    buf.statistics('mean')
    torch.save({'buf': buf}, tmp_path / 'b.pth')
    loaded = torch.load(tmp_path / 'b.pth', weights_only=True)['buf']
    assert loaded.mean() == 3.0 and loaded.statistics('max') == 4.0


def test_failed_download_names_the_url_and_the_key(monkeypatch):
    """Offline, mmengine's http loader raises a bare URLError from deep inside model building;
    with mmssf it is a WeightDownloadError naming the URL and the option to set."""
    import urllib.error

    from mmengine.runner import checkpoint as ckpt_module

    import mmssf  # noqa: F401
    from mmssf.download import WeightDownloadError

    def offline(url, **kwargs):
        raise urllib.error.URLError(OSError(101, 'Network is unreachable'))

    monkeypatch.setattr(ckpt_module, 'load_url', offline)
    url = 'https://download.openmmlab.com/mmclassification/v0/vit/vit-base-p16_in21k.pth'
    for load in (ckpt_module.CheckpointLoader.load_checkpoint, ckpt_module._load_checkpoint):
        with pytest.raises(WeightDownloadError) as err:
            load(url, map_location='cpu')
        assert err.value.url == url
        assert f'cannot download {url} (URLError: [Errno 101] Network is unreachable)' \
            in str(err.value)
        assert ('--cfg-options model.backbone.init_cfg.checkpoint=/path/to/'
                'vit-base-p16_in21k.pth') in str(err.value)


def test_per_parameter_init_lines_reach_the_log_file_not_the_terminal(tmp_path, capsys):
    """mmengine's one record per parameter at model init (hundreds for a ViT-B) stays in the log
    file; the console handler skips it (mmssf.compat)."""
    import mmssf  # noqa: F401
    from mmengine.logging import MMLogger, print_log
    log = tmp_path / 'run.log'
    logger = MMLogger.get_instance('mmssf_init_lines_test', log_file=str(log))
    print_log('\nlayers.0.attn.qkv.weight - torch.Size([96, 32]): \nInitialized by user-defined '
              '`init_weights` in TransformerEncoderLayer', logger=logger)
    print_log('an ordinary line', logger=logger)
    for handler in logger.handlers:
        handler.flush()
    out = capsys.readouterr().out
    assert 'an ordinary line' in out and 'torch.Size' not in out
    text = log.read_text()
    assert 'layers.0.attn.qkv.weight - torch.Size([96, 32])' in text and 'an ordinary line' in text
