"""The benchmark harness finds its configs when mmssf is installed from a wheel, not run from the
checkout: ``setup.py`` ships ``configs/`` as package data (``mmssf/.mim/configs``) and
``mmssf.benchmarks.suites`` looks there when no checkout is beside the package."""
import os
import os.path as osp
import shutil
import subprocess
import zipfile

import pytest

from mmssf.datasets import make_vtab1k
from runner_utils import PY, ROOT

_NOT_COPIED = ('.git', '.venv', 'work_dirs', 'data', 'pretrain', 'build', 'dist', '__pycache__',
               '*.egg-info', '.pytest_cache', '.mim')


@pytest.mark.slow
def test_harness_dry_run_from_a_wheel_outside_the_repo(tmp_path):
    source = tmp_path / 'source'
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_COPIED))
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONPATH='')
    subprocess.run([PY, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                    '-w', str(tmp_path / 'dist'), str(source)], check=True, env=env,
                   capture_output=True, timeout=300)
    wheels = list((tmp_path / 'dist').glob('mmssf-*.whl'))
    assert len(wheels) == 1, wheels
    site = tmp_path / 'site'
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(site)
    assert (site / 'mmssf' / '.mim' / 'configs' / 'vtab1k' / 'recipes.csv').is_file()

    # the harness script alone, outside any checkout; mmssf comes from the unpacked wheel
    outside = tmp_path / 'outside'
    (outside / 'tools' / 'benchmarks').mkdir(parents=True)
    shutil.copy(osp.join(ROOT, 'tools', 'benchmarks', 'run_table.py'),
                outside / 'tools' / 'benchmarks')
    env['PYTHONPATH'] = str(site)
    where = subprocess.run([PY, '-c', 'import mmssf.benchmarks.suites as s; '
                            'print(s.__file__); print(s.CONFIG_ROOT)'],
                           cwd=outside, env=env, capture_output=True, text=True, check=True)
    module_file, config_root = where.stdout.split()
    assert module_file.startswith(str(site)) and config_root.startswith(str(site)), where.stdout
    vtab = make_vtab1k(str(tmp_path / 'vtab'), tasks=('kitti', ), img_size=16)
    run = subprocess.run([PY, 'tools/benchmarks/run_table.py', '--suite', 'vtab1k', '--method',
                          'ssf', '--data-root', vtab, '--tasks', 'kitti', '--work-dir',
                          str(tmp_path / 'work'), '--dry-run'],
                         cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert 'kitti: ssf trainable params: 208,900' in run.stdout
