"""mmssf as a package in an existing OpenMMLab environment: declared requirements (one source,
:mod:`mmssf.dependencies`), the version check at import, and — slow tier — a wheel built from
the repository, installed into a fresh virtual environment that reuses the installed stack and
imported from outside the repository."""
import ast
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from mmssf import dependencies
from runner_utils import HANG_TIMEOUT, ROOT

STACK_OK = {'torch': '2.15.0', 'mmengine': '0.10.7', 'mmcv': '2.1.0', 'mmpretrain': '1.2.0',
            'numpy': '1.26.4', 'Pillow': '11.0.0', 'pycocotools': '2.0.8', 'matplotlib': '3.9.2',
            'mmdet': '3.3.0', 'mmsegmentation': '1.2.2', 'ftfy': '6.3.1', 'regex': '2024.11.6',
            'timm': '1.0.31'}


def test_the_installed_stack_satisfies_the_declared_ranges():
    assert dependencies.version_problems() == []


def test_the_version_check_names_each_problem_and_what_to_install():
    installed = dict(STACK_OK, mmcv='2.2.0', mmengine=None, mmdet='2.28.2', timm=None)
    problems = dependencies.version_problems(installed)
    assert problems == [
        'mmengine is not installed; mmssf needs mmengine>=0.10.0,<1.0.0',
        'mmcv==2.2.0 is installed; mmssf needs mmcv>=2.0.0,<2.2.0',
        "mmdet==2.28.2 is installed; mmssf's 'det' support needs mmdet>=3.3.0,<4.0.0"]
    with pytest.raises(ImportError, match=r'(?s)cannot run in this environment.*mmcv==2\.2\.0.*'
                                          r'MMSSF_SKIP_VERSION_CHECK'):
        dependencies.check_versions(installed)
    dependencies.check_versions(STACK_OK)  # (no error)
    # pre-releases and local tags compare by their release part
    assert dependencies.version_problems(
        dict(STACK_OK, torch='2.4.0+cu121', mmcv='2.1.0rc4')) == []
    assert dependencies.version_problems(dict(STACK_OK, torch='2.3.1')) == [
        'torch==2.3.1 is installed; mmssf needs torch>=2.4.0']


def test_import_fails_with_the_message_in_a_mismatched_environment(tmp_path):
    """A fake ``mmcv`` 2.2.0 first on the path: ``import mmssf`` stops with the check's
    message, before any of mmssf's modules touches the stack."""
    fake = tmp_path / 'mmcv-2.2.0.dist-info'
    fake.mkdir()
    (fake / 'METADATA').write_text('Metadata-Version: 2.1\nName: mmcv\nVersion: 2.2.0\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    result = subprocess.run([sys.executable, '-c', 'import mmssf'], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert result.returncode != 0
    assert 'mmcv==2.2.0 is installed; mmssf needs mmcv>=2.0.0,<2.2.0' in result.stderr
    env['MMSSF_SKIP_VERSION_CHECK'] = '1'
    result = subprocess.run([sys.executable, '-c', 'import mmssf'], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_pip_is_not_asked_for_torch_or_mmcv():
    declared = dependencies.install_requires()
    assert not [r for r in declared if r.split('>')[0] in ('torch', 'mmcv')]
    assert 'mmpretrain>=1.2.0,<2.0.0' in declared and 'mmengine>=0.10.0,<1.0.0' in declared
    extras = dependencies.extras_require()
    assert extras['det'] == ['mmdet>=3.3.0,<4.0.0']
    assert set(extras['all']) == set(extras['det'] + extras['seg'] + extras['timm'])


def test_every_module_parses_as_python_3_9():
    """``python_requires='>=3.9'``: the syntax of every module is that of 3.9 (the suite runs
    on 3.11 only)."""
    for folder in ('mmssf', 'tools'):
        for base, _, names in os.walk(osp.join(ROOT, folder)):
            for name in names:
                if name.endswith('.py'):
                    path = osp.join(base, name)
                    with open(path) as f:
                        ast.parse(f.read(), path, feature_version=(3, 9))


def test_license_file_is_the_apache_license():
    with open(osp.join(ROOT, 'LICENSE')) as f:
        text = f.read()
    assert text.startswith('Apache License\nVersion 2.0, January 2004')
    assert 'END OF TERMS AND CONDITIONS' in text


def _requirement(text):
    """``'mmengine<1.0.0,>=0.10.0'`` -> ``('mmengine', {'<1.0.0', '>=0.10.0'})`` (any order)."""
    name = re.match(r'[A-Za-z0-9_.-]+', text).group(0)
    return name.lower(), frozenset(text[len(name):].replace(' ', '').split(','))


def _site_packages(python):
    code = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
    return subprocess.run([python, '-c', code], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.slow
def test_wheel_installs_into_an_existing_environment_and_imports_outside_the_repo(tmp_path):
    # the wheel, built from a copy of what it packages (the repository stays clean)
    src = tmp_path / 'src'
    shutil.copytree(osp.join(ROOT, 'mmssf'), src / 'mmssf',
                    ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('setup.py', 'README.md', 'LICENSE'):
        shutil.copy(osp.join(ROOT, name), src / name)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '--no-index', '-q', '-w', str(tmp_path / 'dist'), str(src)],
                   check=True, capture_output=True, timeout=HANG_TIMEOUT)
    wheel, = (tmp_path / 'dist').glob('mmssf-*.whl')
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith('.dist-info/METADATA')))
        assert any(n.endswith('.dist-info/licenses/LICENSE') or n.endswith('.dist-info/LICENSE')
                   for n in zf.namelist())
        assert not any(n.startswith(('tests/', 'tools/')) for n in zf.namelist())
    requires = {_requirement(line.split(': ', 1)[1]) for line in metadata.decode().splitlines()
                if line.startswith('Requires-Dist: ') and 'extra ==' not in line}
    assert requires == {_requirement(r) for r in dependencies.install_requires()}

    # "the user's environment": a fresh venv seeing the installed stack, not this checkout
    env_dir = tmp_path / 'env'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(env_dir)], check=True,
                   timeout=HANG_TIMEOUT)
    python = str(env_dir / 'bin' / 'python')
    with open(osp.join(_site_packages(python), 'openmmlab_stack.pth'), 'w') as f:
        f.write(_site_packages(sys.executable) + '\n')  # (its .pth files, e.g. the editable
    clean = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # mmssf, are not run)
    # --no-index: every declared requirement must already be satisfied by the stack
    install = subprocess.run([python, '-m', 'pip', 'install', '--no-index', '-q', str(wheel)],
                             capture_output=True, text=True, env=clean, cwd=str(tmp_path),
                             timeout=HANG_TIMEOUT)
    assert install.returncode == 0, install.stdout + install.stderr
    script = (
        'import mmssf, torch\n'
        'from mmssf.peft import apply_peft\n'
        'from mmpretrain.models import VisionTransformer\n'
        "vit = VisionTransformer(arch=dict(embed_dims=32, num_layers=2, num_heads=2, "
        "feedforward_channels=64), img_size=32, patch_size=8)\n"
        "method = apply_peft(vit, dict(type='SSF'))\n"
        'vit(torch.randn(1, 3, 32, 32))\n'
        'print(mmssf.__file__, mmssf.__version__)\n')
    run = subprocess.run([python, '-c', script], capture_output=True, text=True, env=clean,
                         cwd=str(tmp_path), timeout=HANG_TIMEOUT)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    location = run.stdout.split()[-2]
    assert location.startswith(str(env_dir)), location  # the wheel's copy, not the checkout


UPSTREAM_TRAIN = '''\
# what mmdet's tools/train.py does (mmdet 3.3), without mmssf's additions
import argparse, sys
from mmengine.config import Config, DictAction
from mmengine.runner import Runner
parser = argparse.ArgumentParser()
parser.add_argument('config')
parser.add_argument('--work-dir')
parser.add_argument('--cfg-options', nargs='+', action=DictAction)
args = parser.parse_args()
assert 'mmssf' not in sys.modules  # (the config's custom_imports brings it in)
cfg = Config.fromfile(args.config)
cfg.launcher = 'none'
cfg.merge_from_dict(args.cfg_options)
cfg.work_dir = args.work_dir
Runner.from_cfg(cfg).train()
'''


@pytest.mark.slow
def test_the_upstream_train_script_trains_an_mmssf_config(tmp_path):
    """The README's claim: a plain mmdet ``tools/train.py`` runs the demo config (the config
    imports mmssf) and writes the checkpoint and its merged stock twin."""
    from mmssf.datasets import make_coco
    from runner_utils import data_options
    data = make_coco(str(tmp_path / 'coco'), num_train=2, num_val=1) + '/'
    script = tmp_path / 'upstream_train.py'
    script.write_text(UPSTREAM_TRAIN)
    work = tmp_path / 'work'
    opts = data_options(data, coco=True) + ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                                            'train_dataloader.batch_size=1']
    config = osp.join(ROOT, 'configs/demo/ssf_mask-rcnn_swin-tiny_demo-coco.py')
    result = subprocess.run(
        [sys.executable, str(script), config, '--work-dir', str(work), '--cfg-options'] + opts,
        cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (work / 'epoch_1.pth').is_file() and (work / 'epoch_1_merged.pth').is_file()
