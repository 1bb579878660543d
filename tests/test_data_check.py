"""``tools/dataset_converters/check_benchmark_data.py`` (:mod:`mmssf.benchmarks.data_check`):
each kind of damage to a generated VTAB-1k / FGVC folder is reported — a missing task, a
missing split file, a wrong image count, a label out of range, a missing image — all of them in
one run, and a ready folder passes."""
import dataclasses
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from mmssf.benchmarks import get_suite
from mmssf.benchmarks.data_check import find_data_problems
from mmssf.datasets.fgvc import fgvc_split_size
from mmssf.datasets.generate_classification import make_fgvc, make_vtab1k
from mmssf.datasets.vtab import VTAB1K_TASKS, vtab1k_split_size
from runner_utils import HANG_TIMEOUT, ROOT

TOOL = osp.join(ROOT, 'tools', 'dataset_converters', 'check_benchmark_data.py')


def _lines(path):
    with open(path) as f:
        return f.read().splitlines()


def _sizes_as_found(suite, root, tasks):
    """The suite with its official sizes replaced by those of the generated folder."""
    found = {(t, s): len(suite.reader(suite.task_root(root, t), s, t))
             for t in tasks for s in suite.all_splits}
    return dataclasses.replace(suite, split_size=lambda t, s: found[(t, s)])


def test_official_sizes():
    assert len(VTAB1K_TASKS) == 19
    assert [vtab1k_split_size('kitti', s) for s in ('train800', 'val200', 'train800val200',
                                                      'test')] == [800, 200, 1000, 711]
    assert vtab1k_split_size('dsprites_loc', 'test') == 73728
    assert [fgvc_split_size('cub', s) for s in ('train', 'val', 'trainval', 'test')] == \
        [5394, 600, 5994, 5794]
    with pytest.raises(ValueError, match="unknown VTAB-1k split 'train'; splits are train800"):
        vtab1k_split_size('kitti', 'train')


def test_every_kind_of_vtab1k_damage_is_reported(tmp_path):
    suite = get_suite('vtab1k')
    root = make_vtab1k(str(tmp_path / 'vtab'), tasks=('dtd', 'eurosat', 'kitti'))
    tasks = ('dtd', 'eurosat', 'kitti')
    ready = _sizes_as_found(suite, root, tasks)
    assert find_data_problems(ready, root, tasks) == []
    # official sizes: the tiny folder is not the real one
    assert f'VTAB-1k dtd train800: {len(_lines(osp.join(root, "dtd", "train800.txt")))} ' \
        'images, the official preparation has 800' in find_data_problems(suite, root, tasks)

    shutil.rmtree(osp.join(root, 'eurosat'))  # missing task
    os.remove(osp.join(root, 'dtd', 'val200.txt'))  # missing split
    lines = _lines(osp.join(root, 'dtd', 'test.txt'))
    with open(osp.join(root, 'dtd', 'test.txt'), 'w') as f:  # wrong count (one line less)
        f.write('\n'.join(lines[:-1]) + '\n')
    with open(osp.join(root, 'kitti', 'train800.txt'), 'a') as f:  # label out of range
        f.write('images/train800/000000.jpg 9\n')
    first_test_image = _lines(osp.join(root, 'kitti', 'test.txt'))[0].split()[0]
    os.remove(osp.join(root, 'kitti', first_test_image))  # missing image
    problems = find_data_problems(ready, root, tasks)
    text = '\n'.join(problems)
    assert len(problems) == 5, text
    assert f'VTAB-1k eurosat: folder {osp.join(root, "eurosat")} does not exist' in problems
    assert 'VTAB-1k dtd val200:' in text and 'val200.txt does not exist' in text
    assert f'VTAB-1k dtd test: {len(lines) - 1:,} images, the official preparation has ' \
        f'{len(lines):,}' in problems
    assert 'VTAB-1k kitti train800:' in text and 'label 9 is outside 0..3' in text
    assert 'VTAB-1k kitti test:' in text and 'is listed but does not exist' in text
    # train800val200 of kitti lists its own images: untouched, no problem reported for it
    assert 'kitti train800val200' not in text


def test_every_kind_of_fgvc_damage_is_reported(tmp_path):
    suite = get_suite('fgvc')
    root = make_fgvc(str(tmp_path / 'fgvc'), datasets=('cub', 'oxford_flowers'))
    tasks = ('cub', 'oxford_flowers', 'stanford_dogs')
    ready = _sizes_as_found(suite, root, ('cub', 'oxford_flowers'))
    assert find_data_problems(ready, root, ('cub', 'oxford_flowers')) == []
    cub = osp.join(root, 'CUB_200_2011')
    with open(osp.join(cub, 'val.json')) as f:
        val = json.load(f)
    image = next(iter(val))
    val[image] = 200  # label out of range (200 classes)
    with open(osp.join(cub, 'val.json'), 'w') as f:
        json.dump(val, f)
    os.remove(osp.join(root, 'OxfordFlowers', 'test.json'))
    problems = find_data_problems(dataclasses.replace(ready, split_size=None), root, tasks)
    text = '\n'.join(problems)
    assert 'FGVC stanford_dogs: folder' in text and 'StanfordDogs does not exist' in text
    assert 'FGVC cub val:' in text and '200' in text
    assert 'FGVC oxford_flowers test:' in text and 'test.json' in text


def test_the_tool_prints_every_problem_and_exits_1(tmp_path):
    root = make_vtab1k(str(tmp_path / 'vtab'), tasks=('dtd', ))
    os.remove(osp.join(root, 'dtd', 'test.txt'))

    def run(*argv):
        return subprocess.run([sys.executable, TOOL] + list(argv), capture_output=True,
                              text=True, timeout=HANG_TIMEOUT, cwd=str(tmp_path))

    result = run('--suite', 'vtab1k', root, '--tasks', 'dtd,eurosat', '--no-size-check')
    assert result.returncode == 1, result.stderr
    assert '2 problem(s) in 2 VTAB-1k task(s)' in result.stdout
    assert 'VTAB-1k eurosat: folder' in result.stdout and 'test.txt does not exist' in \
        result.stdout
    result = run('--suite', 'vtab1k', root, '--tasks', 'dtdd')
    assert result.returncode == 2 and "unknown VTAB-1k task 'dtdd'" in result.stderr
    result = run('--suite', 'vtab1k', str(tmp_path / 'nowhere'))
    assert result.returncode == 1 and 'does not exist' in result.stdout
