from setuptools import find_packages, setup


def read_module(path):
    """The names a standard-library-only module of mmssf defines (without importing mmssf)."""
    namespace = {}
    with open(path) as f:
        exec(compile(f.read(), path, 'exec'), namespace)
    return namespace


deps = read_module('mmssf/dependencies.py')

setup(
    name='mmssf',
    version=read_module('mmssf/version.py')['__version__'],
    description='Parameter-efficient fine-tuning (SSF, VPT, SPT, LoRA, DoRA, SNELL, Adapter, '
    'Mona, RLRR, BitFit) of Swin and ViT backbones for mmpretrain, mmdet and mmsegmentation',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools', 'benchmarks')),
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
