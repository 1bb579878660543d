"""The OpenMMLab stack mmssf works with, declared once: ``setup.py`` reads these ranges (its
``install_requires`` / ``extras_require``) and ``import mmssf`` checks the installed versions, the
way mmdet checks mmcv's, so a mismatched environment fails at import with what to install rather
than later with an obscure error.

Standard library only: ``setup.py`` executes this file without importing mmssf.

- ``REQUIRED``: what ``import mmssf`` needs. torch and mmcv are checked but not declared to pip
  (as OpenMMLab does: pip must not replace a CUDA torch, and mmcv's ops are built or downloaded
  for one torch — see the README, "Use mmssf in your existing OpenMMLab environment").
- ``OPTIONAL``: the task libraries, checked only when installed (pip extras ``det``, ``seg``,
  ``timm``; ``all`` is the three).
"""
import re
from typing import Dict, List, Optional, Tuple

__all__ = ['REQUIRED', 'OPTIONAL', 'NOT_DECLARED', 'install_requires', 'extras_require',
           'check_versions', 'version_problems']

# distribution name: (lowest version, first version that is too new or None)
REQUIRED: Dict[str, Tuple[str, Optional[str]]] = {
    'torch': ('2.4.0', None),  # torch.serialization.add_safe_globals (safe loading of resumes)
    'mmengine': ('0.10.0', '1.0.0'),  # mmssf.compat patches 0.10's HistoryBuffer pickling
    'mmcv': ('2.0.0', '2.2.0'),  # mmdet 3.x / mmseg 1.x refuse mmcv >= 2.2
    'mmpretrain': ('1.2.0', '2.0.0'),  # the VTAB-1k / FGVC readers subclass its datasets
    'numpy': ('1.22.0', None),
    'Pillow': ('9.0.0', None),
    'pycocotools': ('2.0.0', None),  # the generated COCO datasets (demos, tests)
    'matplotlib': ('3.5.0', None),  # SPT's sensitivity plots
}
OPTIONAL: Dict[str, Dict[str, Tuple[str, Optional[str]]]] = {
    'det': {'mmdet': ('3.3.0', '4.0.0')},
    'seg': {'mmsegmentation': ('1.2.0', '2.0.0'),
            'ftfy': ('6.0.0', None), 'regex': ('2022.1.18', None)},  # (mmseg.utils imports them)
    'timm': {'timm': ('0.9.0', None)},
}
NOT_DECLARED = ('torch', 'mmcv')


def _spec(name: str, bounds: Tuple[str, Optional[str]]) -> str:
    low, high = bounds
    return f'{name}>={low}' + (f',<{high}' if high else '')


def install_requires() -> List[str]:
    return [_spec(n, b) for n, b in REQUIRED.items() if n not in NOT_DECLARED]


def extras_require() -> Dict[str, List[str]]:
    extras = {group: [_spec(n, b) for n, b in names.items()] for group, names in OPTIONAL.items()}
    extras['all'] = sorted({spec for specs in extras.values() for spec in specs})
    return extras


def _release(version: str) -> Tuple[int, ...]:
    """``'2.1.0rc1+cu121'`` -> ``(2, 1, 0)``: the release part (pre-releases count as it)."""
    match = re.match(r'\d+(\.\d+)*', version)
    return tuple(int(p) for p in match.group(0).split('.')) if match else ()


def _in_range(version: str, bounds: Tuple[str, Optional[str]]) -> bool:
    low, high = bounds
    found = _release(version)
    return found >= _release(low) and (high is None or found < _release(high))


def version_problems(installed: Optional[Dict[str, Optional[str]]] = None) -> List[str]:
    """One line per required package that is missing or out of range, and per optional one
    that is installed out of range. ``installed`` (``{name: version or None}``) replaces the
    look-up of the environment, for tests."""
    if installed is None:
        installed = {}
        from importlib import metadata
        for name in list(REQUIRED) + [n for g in OPTIONAL.values() for n in g]:
            try:
                installed[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                installed[name] = None
    problems = []
    for name, bounds in REQUIRED.items():
        version = installed.get(name)
        if version is None:
            problems.append(f'{name} is not installed; mmssf needs {_spec(name, bounds)}')
        elif not _in_range(version, bounds):
            problems.append(f'{name}=={version} is installed; mmssf needs {_spec(name, bounds)}')
    for group, names in OPTIONAL.items():
        for name, bounds in names.items():
            version = installed.get(name)
            if version is not None and not _in_range(version, bounds):
                problems.append(f'{name}=={version} is installed; mmssf\'s {group!r} support '
                                f'needs {_spec(name, bounds)}')
    return problems


def check_versions(installed: Optional[Dict[str, Optional[str]]] = None) -> None:
    """Raise ``ImportError`` listing every problem of :func:`version_problems`."""
    problems = version_problems(installed)
    if problems:
        raise ImportError(
            'mmssf cannot run in this environment:\n  - ' + '\n  - '.join(problems)
            + '\nInstall the versions named (torch and mmcv as the OpenMMLab install guides say, '
              'e.g. `mim install "mmcv>=2.0.0,<2.2.0"`), or run `make setup` in the mmssf '
              'repository for the tested stack. Set MMSSF_SKIP_VERSION_CHECK=1 to import anyway.')
