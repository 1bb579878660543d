from setuptools import find_packages, setup


def read_version():
    namespace = {}
    with open('mmssf/version.py') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='mmssf',
    version=read_version(),
    description='Parameter-efficient fine-tuning (SSF, VPT, SPT, LoRA, Adapter, RLRR, BitFit) '
    'of Swin and ViT backbones for mmpretrain, mmdet and mmsegmentation',
    packages=find_packages(exclude=('tests', 'configs', 'tools', 'benchmarks')),
    python_requires='>=3.9',
    license='Apache License 2.0',
)
