"""Offline starts: a weight download that fails says which config key to point at a local file.

Stock configs name their pretrained weights by URL (``init_cfg=dict(type='Pretrained',
checkpoint='https://download.openmmlab.com/...')``). Without a network, mmengine's loader
raises a bare ``URLError`` from deep inside model building. Once mmssf is imported (see
:mod:`mmssf.compat`) that is a :class:`WeightDownloadError` naming the URL, and the tools
(``tools/train.py``, ``tools/test.py``) add the exact ``--cfg-options`` key that holds it.
"""
import http.client
import os.path as osp
import socket
import urllib.error
from typing import List

from .checkpoint_errors import WeightDownloadError

__all__ = ['DOWNLOAD_ERRORS', 'WeightDownloadError', 'download_error', 'keys_holding',
           'with_config_keys']

#: what urllib / torch.hub raise when a download cannot happen (offline, refused, timed out)
DOWNLOAD_ERRORS = (urllib.error.URLError, socket.timeout, ConnectionError,
                   http.client.HTTPException)


def download_error(url: str, err: BaseException) -> WeightDownloadError:
    reason = f'{type(err).__name__}: {getattr(err, "reason", None) or err}'
    local = osp.basename(url.split('?', 1)[0]) or 'weights.pth'
    return WeightDownloadError(
        url, f'cannot download {url} ({reason}). Offline? Fetch the file '
        f'where there is a network and point the config key that holds this URL at the local '
        f'copy, e.g. --cfg-options model.backbone.init_cfg.checkpoint=/path/to/{local} (for a '
        f'stock backbone\'s init_cfg); or start from random weights with '
        f'model.backbone.init_cfg=None', reason=reason)


def keys_holding(node, value, prefix: str = '') -> List[str]:
    """The dotted config keys (``model.backbone.init_cfg.checkpoint``) whose value is ``value``."""
    found = []
    if isinstance(node, dict):
        for key, child in node.items():
            found += keys_holding(child, value, f'{prefix}{key}.')
    elif isinstance(node, (list, tuple)):
        for i, child in enumerate(node):
            found += keys_holding(child, value, f'{prefix}{i}.')
    elif isinstance(node, str) and node == value:
        found.append(prefix[:-1])
    return found


def with_config_keys(err: WeightDownloadError, cfg) -> str:
    """``err``'s message with the keys of ``cfg`` that hold its URL named (the key a user sets
    with ``--cfg-options KEY=/local/file.pth``)."""
    keys = keys_holding(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg, err.url)
    if not keys:
        return str(err)
    local = osp.basename(err.url.split('?', 1)[0]) or 'weights.pth'
    options = ' '.join(f'{k}=/path/to/{local}' for k in keys)
    return (f'cannot download {err.url} ({err.reason}). Offline? Fetch the file where there is '
            f'a network and point {" and ".join(keys)} at the local copy: --cfg-options '
            f'{options}' + (
                f' (or start from random weights: {keys[0].rsplit(".", 1)[0]}=None)'
                if keys[0].endswith('init_cfg.checkpoint') else ''))
