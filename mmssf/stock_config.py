"""The stock config a tuned config stands on: its ``_base_`` files that do not use mmssf.

A tuned config is a stock config plus the mmssf lines (``_base_ = STOCK``); the merged
``X_merged.pth`` is evaluated with that stock config. Error messages and
``merge_peft.py`` name it so that the user does not have to work it out.
"""
import os.path as osp
from typing import List, Optional, Tuple

from mmengine.config import Config

__all__ = ['stock_bases', 'stock_command']


def stock_bases(config_path: Optional[str]) -> List[Tuple[str, str, Optional[Config]]]:
    """``[(name as written, path, Config or None)]`` of the ``_base_`` files of
    ``config_path``, in order.

    The Config is None for a base that cannot be read or that uses mmssf (not a stock config);
    unreadable or absent configs give an empty list (the callers only inform with it).
    """
    if not config_path or not str(config_path).endswith('.py') or not osp.isfile(config_path):
        return []
    config_path = osp.abspath(config_path)  # (mmengine resolves a local _base_ against it)
    try:
        bases = Config._get_base_files(config_path)
    except Exception:  # noqa: BLE001  (a config mmengine cannot parse: nothing to name)
        return []
    found = []
    for base in ([bases] if isinstance(bases, str) else bases):
        try:
            base_path, _ = Config._get_cfg_path(base, config_path)
            base_path = osp.normpath(base_path)
            base_cfg = Config.fromfile(base_path)
        except Exception:  # noqa: BLE001
            found.append((str(base), str(base), None))
            continue
        stock = 'mmssf' not in repr(base_cfg.to_dict())
        found.append((str(base), base_path, base_cfg if stock else None))
    return found


def stock_command(config_path: Optional[str], checkpoint: str) -> str:
    """``tools/misc/eval_stock.py STOCK_CONFIG CHECKPOINT`` with the stock base of
    ``config_path`` when it has one (``STOCK_CONFIG`` otherwise)."""
    stock = next((path for _, path, cfg in stock_bases(config_path) if cfg is not None),
                 'STOCK_CONFIG')
    return f'tools/misc/eval_stock.py {stock} {checkpoint}'
