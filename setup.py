import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

#: the configs shipped inside the package (OpenMMLab's mim layout), for the benchmark harness
MIM_CONFIGS = osp.join('mmssf', '.mim', 'configs')


def read_module(path):
    """The names a standard-library-only module of mmssf defines (without importing mmssf)."""
    namespace = {}
    with open(path) as f:
        exec(compile(f.read(), path, 'exec'), namespace)
    return namespace


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


deps = read_module('mmssf/dependencies.py')

setup(
    name='mmssf',
    version=read_module('mmssf/version.py')['__version__'],
    description='Parameter-efficient fine-tuning (SSF, VPT, SPT, LoRA, DoRA, SNELL, Adapter, '
    'Mona, RLRR, BitFit) of Swin and ViT backbones for mmpretrain, mmdet and mmsegmentation',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools', 'benchmarks')),
    package_data={'mmssf': add_mim_configs()},
    # torch and mmcv are checked at import (mmssf.dependencies), not installed by pip
    install_requires=deps['install_requires'](),
    extras_require=deps['extras_require'](),
    python_requires='>=3.9',
    license='Apache License 2.0',
    license_files=['LICENSE'],
    classifiers=[
        'License :: OSI Approved :: Apache Software License',
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3.11',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
