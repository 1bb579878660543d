import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

#: the configs shipped inside the package (OpenMMLab's mim layout), for the benchmark harness
MIM_CONFIGS = osp.join('mmssf', '.mim', 'configs')


def read_version():
    namespace = {}
    with open('mmssf/version.py') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def add_mim_configs():
    """Copy ``configs/`` to ``mmssf/.mim/configs`` for a wheel / sdist (not for an editable
    install, which reads the checkout's ``configs/``), so the harness finds its recipes and
    configs wherever mmssf is installed; returns the files as package data."""
    editable = any(cmd in sys.argv for cmd in ('develop', 'editable_wheel'))
    if not editable and osp.isdir('configs'):
        if osp.isdir(MIM_CONFIGS):
            shutil.rmtree(MIM_CONFIGS)
        shutil.copytree('configs', MIM_CONFIGS,
                        ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    return [osp.relpath(osp.join(folder, name), 'mmssf')
            for folder, _, files in os.walk(MIM_CONFIGS) for name in files]


setup(
    name='mmssf',
    version=read_version(),
    description='Parameter-efficient fine-tuning (SSF, VPT, SPT, LoRA, DoRA, SNELL, Adapter, '
    'Mona, RLRR, BitFit) of Swin and ViT backbones for mmpretrain, mmdet and mmsegmentation',
    packages=find_packages(exclude=('tests', 'configs', 'tools', 'benchmarks')),
    package_data={'mmssf': add_mim_configs()},
    python_requires='>=3.9',
    license='Apache License 2.0',
)
