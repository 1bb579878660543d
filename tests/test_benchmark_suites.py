"""VTAB-1k and FGVC: readers (stock CustomDataset for VTAB-1k, mmssf.FGVC), their errors on bad
data, the recipe tables (SSF rows = the official scripts), the paper tables (consistent with the
means the papers print), every recipe row building, the result table's two averages, and the
harness end to end on generated data (slow)."""
import copy
import importlib.util
import json
import os
import os.path as osp
import shutil
import signal
import subprocess
import time

import pytest
from mmengine.config import Config

from mmssf.benchmarks import get_suite, load_paper_results, load_recipes, run_config
from mmssf.benchmarks.recipes import read_recipe_rows
from mmssf.benchmarks.report import ResultTable, averages
from mmssf.benchmarks.suites import METHODS
from mmssf.datasets import (FGVC, FGVC_DATASETS, VTAB1K_TASKS, VTAB1k, make_fgvc, make_vtab1k,
                            read_fgvc_split)
from runner_utils import HANG_TIMEOUT, PY, ROOT

VTAB, FGVC_SUITE = get_suite('vtab1k'), get_suite('fgvc')
SUITES = (VTAB, FGVC_SUITE)


def recipes(suite):
    return load_recipes(suite.recipes_file, suite.tasks, suite.train_augs)


def papers(suite):
    return load_paper_results(suite.papers_file, suite.tasks, suite.groups)


# ----------------------------------------------------------------------------- the task tables
def test_vtab1k_has_the_19_tasks_with_their_class_counts_and_groups():
    assert {t: c for t, (c, _) in VTAB1K_TASKS.items()} == dict(
        cifar=100, caltech101=102, dtd=47, oxford_flowers102=102, oxford_iiit_pet=37, svhn=10,
        sun397=397, patch_camelyon=2, eurosat=10, resisc45=45, diabetic_retinopathy=5,
        clevr_count=8, clevr_dist=6, dmlab=6, kitti=4, dsprites_loc=16, dsprites_ori=16,
        smallnorb_azi=18, smallnorb_ele=9)
    groups = [g for _, g in VTAB1K_TASKS.values()]
    assert (groups.count('Natural'), groups.count('Specialized'), groups.count('Structured')) \
        == (7, 4, 8)
    assert {k: d['num_classes'] for k, d in FGVC_DATASETS.items()} == dict(
        cub=200, nabirds=555, oxford_flowers=102, stanford_dogs=120, stanford_cars=196)


# ------------------------------------------------------------------------------ recipe tables
# (lr, weight decay, drop-path) as read from dongzelian/SSF, train_scripts/vit/vtab/<dir>/
# train_ssf.sh (--lr, --weight-decay, --drop-path; all: --epochs 100, 2 GPUs x --batch-size 32,
# --warmup-epochs 10, --opt adamw, --no-aug --direct-resize)
SSF_VTAB = {
    'cifar': (5e-3, 5e-5, 0.0),                  # train_scripts/vit/vtab/cifar_100/train_ssf.sh
    'caltech101': (1e-3, 5e-2, 0.1),             # .../vtab/caltech101/train_ssf.sh
    'dtd': (5e-3, 5e-5, 0.0),                    # .../vtab/dtd/train_ssf.sh
    'oxford_flowers102': (5e-3, 5e-5, 0.0),      # .../vtab/flowers102/train_ssf.sh
    'oxford_iiit_pet': (5e-3, 5e-5, 0.0),        # .../vtab/pets/train_ssf.sh
    'svhn': (1e-2, 5e-5, 0.0),                   # .../vtab/svhn/train_ssf.sh
    'sun397': (5e-3, 5e-5, 0.0),                 # .../vtab/sun397/train_ssf.sh
    'patch_camelyon': (5e-3, 5e-5, 0.0),         # .../vtab/patch_camelyon/train_ssf.sh
    'eurosat': (3e-3, 5e-2, 0.2),                # .../vtab/eurosat/train_ssf.sh
    'resisc45': (2e-3, 5e-5, 0.1),               # .../vtab/resisc45/train_ssf.sh
    'diabetic_retinopathy': (5e-3, 5e-5, 0.2),   # .../vtab/diabetic_retinopathy/train_ssf.sh
    'clevr_count': (2e-3, 5e-2, 0.1),            # .../vtab/clevr_count/train_ssf.sh
    'clevr_dist': (5e-2, 5e-2, 0.1),             # .../vtab/clevr_dist/train_ssf.sh
    'dmlab': (5e-3, 5e-5, 0.1),                  # .../vtab/dmlab/train_ssf.sh
    'kitti': (1e-2, 5e-5, 0.0),                  # .../vtab/kitti/train_ssf.sh
    'dsprites_loc': (1e-2, 5e-5, 0.0),           # .../vtab/dsprites_loc/train_ssf.sh
    'dsprites_ori': (5e-3, 5e-5, 0.2),           # .../vtab/dsprites_ori/train_ssf.sh
    'smallnorb_azi': (2e-2, 5e-5, 0.1),          # .../vtab/smallnorb_azi/train_ssf.sh
    'smallnorb_ele': (5e-3, 5e-2, 0.2),          # .../vtab/smallnorb_ele/train_ssf.sh
}
# (lr, weight decay, drop-path, EMA decay) from dongzelian/SSF train_scripts/vit/fgvc/<dir>/
# train_ssf.sh (all: 100 epochs, 2 GPUs x 32, warm-up 10, adamw, --simple-aug, --model-ema)
SSF_FGVC = {
    'cub': (1e-2, 5e-2, 0.0, 0.9998),              # .../fgvc/cub_2011/train_ssf.sh
    'nabirds': (2e-4, 5e-2, 0.1, 0.9998),          # .../fgvc/nabirds/train_ssf.sh
    'oxford_flowers': (1e-2, 5e-2, 0.1, 0.999),    # .../fgvc/oxford_flowers/train_ssf.sh
    'stanford_dogs': (2.5e-4, 5e-2, 0.0, 0.9998),  # .../fgvc/stanford_dogs/train_ssf.sh
    'stanford_cars': (2e-2, 5e-2, 0.0, 0.9998),    # .../fgvc/stanford_cars/train_ssf.sh
}
# (lr, weight decay, drop-path, simple_aug) from zstarN70/RLRR RLRRDatasets/VTABConfig.py
RLRR_VTAB = {
    'clevr_count': (5e-3, 5e-5, 0.5, True),      # get_clevr_count_config
    'kitti': (3e-3, 5e-2, 0.3, True),            # get_kitti_config
    'resisc45': (3e-3, 5e-5, 0.0, False),        # get_resisc45_config
    'cifar': (3e-3, 5e-5, 0.1, False),           # get_cifar_config
}

# (lr, weight decay, total batch, epochs, sparsity = --init_thres) from ssfgunner/SNELL
# scripts/vtab/snell32/vit_<name>_snell.sh (all: --low_rank_dim 32, adamw, 1 GPU, --no_aug
# --direct_resize; drop-path 0.1 and warm-up 10: train.py's defaults)
SNELL_VTAB = {
    'cifar': (1e-3, 1e-2, 16, 200, 0.9),               # vit_cifar_snell.sh
    'caltech101': (1e-3, 1e-2, 16, 200, 0.4),          # vit_caltech_snell.sh
    'dtd': (1e-3, 1e-2, 64, 200, 0.995),               # vit_dtd_snell.sh
    'oxford_flowers102': (1e-3, 1e-2, 32, 200, 0.9),   # vit_flower_snell.sh
    'oxford_iiit_pet': (1e-3, 1e-2, 32, 200, 0.5),     # vit_pets_snell.sh
    'svhn': (1e-3, 1e-2, 32, 200, 0.0),                # vit_svhn_snell.sh
    'sun397': (1e-3, 1e-3, 32, 200, 0.99),             # vit_sun397_snell.sh
    'patch_camelyon': (7e-4, 5e-2, 16, 100, 0.15),     # vit_camelyon_snell.sh
    'eurosat': (1e-3, 4e-4, 16, 100, 0.5),             # vit_eurosat_snell.sh
    'resisc45': (1e-3, 1e-2, 32, 100, 0.0),            # vit_resisc_snell.sh
    'diabetic_retinopathy': (1e-3, 5e-2, 32, 100, 0.5),  # vit_retino_snell.sh
    'clevr_count': (1e-3, 1e-2, 16, 100, 0.1),         # vit_clevr_count_snell.sh
    'clevr_dist': (1e-3, 1e-3, 16, 100, 0.74),         # vit_clevr_dist_snell.sh
    'dmlab': (1e-3, 1e-4, 8, 100, 0.0),                # vit_dmlab_snell.sh
    'kitti': (1e-3, 1e-2, 8, 100, 0.37),               # vit_kitti_snell.sh
    'dsprites_loc': (1e-3, 1e-2, 16, 100, 0.0),        # vit_dloc_snell.sh
    'dsprites_ori': (1e-3, 1e-2, 8, 100, 0.88),        # vit_dori_snell.sh
    'smallnorb_azi': (1e-3, 1e-2, 16, 100, 0.0),       # vit_snorbazi_snell.sh
    'smallnorb_ele': (1e-3, 1e-3, 16, 200, 0.08),      # vit_snorbele_snell.sh
}
# (lr, weight decay, sparsity) from ssfgunner/SNELL scripts/fgvc/snell32/vit_<name>_snell.sh
# (all: --low_rank_dim 32, batch 32, 100 epochs, adamw, 1 GPU, timm's train transform)
SNELL_FGVC = {
    'cub': (1e-3, 1e-2, 0.3),             # vit_cub_snell.sh
    'nabirds': (5e-4, 1e-2, 0.1),         # vit_nabirds_snell.sh
    'oxford_flowers': (1e-3, 1e-2, 0.8),  # vit_flowers_snell.sh
    'stanford_dogs': (3e-4, 5e-3, 0.1),   # vit_dogs_snell.sh
    'stanford_cars': (1e-3, 1e-2, 0.0),   # vit_cars_snell.sh
}


def test_ssf_vtab1k_rows_are_the_official_scripts():
    table = recipes(VTAB)['ssf']
    assert set(table) == set(SSF_VTAB) == set(VTAB.tasks)
    for task, (lr, wd, dp) in SSF_VTAB.items():
        r = table[task]
        assert (r.lr, r.weight_decay, r.drop_path) == (lr, wd, dp), task
        assert (r.epochs, r.batch_size, r.warmup_epochs, r.optimizer, r.train_aug,
                r.ema_decay) == (100, 64, 10, 'adamw', 'none', None), task
        assert r.source.startswith('dongzelian/SSF train_scripts/vit/vtab/'), r.source


def test_ssf_fgvc_rows_are_the_official_scripts():
    table = recipes(FGVC_SUITE)['ssf']
    for task, (lr, wd, dp, ema) in SSF_FGVC.items():
        r = table[task]
        assert (r.lr, r.weight_decay, r.drop_path, r.ema_decay) == (lr, wd, dp, ema), task
        assert (r.epochs, r.batch_size, r.warmup_epochs, r.train_aug) == (100, 64, 10,
                                                                          'rrc_flip')
        assert r.source.startswith('dongzelian/SSF train_scripts/vit/fgvc/'), r.source


def test_rlrr_rows_are_its_config_file():
    table = recipes(VTAB)['rlrr']
    for task, (lr, wd, dp, flip) in RLRR_VTAB.items():
        r = table[task]
        assert (r.lr, r.weight_decay, r.drop_path) == (lr, wd, dp), task
        assert r.train_aug == ('flip' if flip else 'none') and r.batch_size == 32
        assert 'RLRRDatasets/VTABConfig.py' in r.source


def test_snell_rows_are_the_official_scripts_rank_and_sparsity_included():
    vtab, fgvc = recipes(VTAB)['snell'], recipes(FGVC_SUITE)['snell']
    assert set(vtab) == set(SNELL_VTAB) == set(VTAB.tasks)
    for task, (lr, wd, batch, epochs, sparsity) in SNELL_VTAB.items():
        r = vtab[task]
        assert (r.lr, r.weight_decay, r.batch_size, r.epochs) == (lr, wd, batch, epochs), task
        assert dict(r.peft_options) == dict(r=32, sparsity=sparsity), task
        assert (r.drop_path, r.warmup_epochs, r.optimizer, r.train_aug, r.ema_decay) == \
            (0.1, 10, 'adamw', 'none', None), task
        assert r.source.startswith('ssfgunner/SNELL scripts/vtab/snell32/'), r.source
    assert set(fgvc) == set(SNELL_FGVC) == set(FGVC_SUITE.tasks)
    for task, (lr, wd, sparsity) in SNELL_FGVC.items():
        r = fgvc[task]
        assert (r.lr, r.weight_decay, r.batch_size, r.epochs) == (lr, wd, 32, 100), task
        assert dict(r.peft_options) == dict(r=32, sparsity=sparsity), task
        assert (r.drop_path, r.warmup_epochs, r.train_aug) == (0.1, 10, 'rrc_flip'), task
        assert r.source.startswith('ssfgunner/SNELL scripts/fgvc/snell32/'), r.source


def test_recipe_peft_options_reach_the_method_config_and_its_model():
    """A row's peft_options land in model.backbone.peft (the SNELL config's own 0.9 is replaced
    by the task's sparsity) and the built method uses them; a config without a peft dict is an
    error naming the recipe."""
    from mmengine.registry import MODELS, init_default_scope
    recipe = recipes(VTAB)['snell']['dtd']
    cfg = run_config(Config.fromfile(VTAB.method_config('snell')), VTAB, 'dtd', '/data',
                     *VTAB.splits['official'], recipe)
    peft = cfg.model.backbone.peft
    assert (peft.r, peft.sparsity) == (32, 0.995) and peft.drop_path == 0.1
    init_default_scope('mmpretrain')
    backbone = MODELS.build(dict(cfg.model.backbone.to_dict(), arch=TINY_ARCH, img_size=32,
                                 patch_size=16, init_cfg=None))
    factors = {n: p.shape for n, p in backbone.named_parameters() if n.endswith('snell_in')}
    assert factors and all(shape[-1] == 32 // 2 for shape in factors.values())  # r / P
    with pytest.raises(KeyError, match='snell/dtd sets peft_options'):
        run_config(Config.fromfile(osp.join(VTAB.config_dir, VTAB.stock_config_name)), VTAB,
                   'dtd', '/data', *VTAB.splits['official'], recipe)


@pytest.mark.parametrize('suite', SUITES, ids=lambda s: s.name)
def test_every_method_has_a_sourced_recipe_for_every_task(suite):
    table = recipes(suite)
    assert sorted(table) == sorted(METHODS)
    for method, per_task in table.items():
        assert set(per_task) == set(suite.tasks), method
        for r in per_task.values():
            assert r.source and r.lr > 0 and r.epochs > 0 and r.batch_size > 0
            assert r.warmup_epochs < r.epochs


def test_recipe_table_errors_name_file_and_line(tmp_path):
    header = open(VTAB.recipes_file).read().split('\n')
    header = next(line for line in header if line.startswith('method,'))
    good = 'ssf,dtd,1e-3,0,0,100,64,10,adamw,none,,,,,a script'
    cases = {  # body -> (message, line)
        'ssf,dtdd,1e-3,0,0,100,64,10,adamw,none,,,,,a script': ("unknown task 'dtdd'", 3),
        good + '\n# a comment line\n' + good: ('a second row', 5),
        'ssf,dtd,fast,0,0,100,64,10,adamw,none,,,,,a script': ('lr must be a float', 3),
        'ssf,dtd,1e-3,0,0,100,64,10,lamb,none,,,,,a script': ('optimizer must be one of', 3),
        'ssf,dtd,1e-3,0,0,100,64,10,adamw,none,,,,,': ('needs its source', 3),
        'ssf,dtd,1e-3,0,0,100,64,10,adamw,none,,,,r 32,a script': ('key=value pairs', 3),
        'ssf,dtd,1e-3,0,0,100,64,10,adamw,none,,,,r=32 r=8,a script': ("sets 'r' twice", 3),
        'ssf,dtd,1e-3,0,0,100,64,10,adamw,none,,,,r=big,a script': ('r=.big. is not a number', 3),
        'ssf,dtd,1e-3,0,0,100,64,10,adamw,none,,,a script': ('expected 15 comma-separated', 3),
    }
    for body, (message, line) in cases.items():
        path = tmp_path / 'recipes.csv'
        path.write_text('# comment\n' + header + '\n' + body + '\n')
        with pytest.raises(ValueError, match=message) as err:
            load_recipes(str(path), VTAB.tasks, VTAB.train_augs)
        assert f'{path}:{line}:' in str(err.value)
    assert len(read_recipe_rows(VTAB.recipes_file)) > 19


# ------------------------------------------------------------------------------- paper tables
@pytest.mark.parametrize('suite', SUITES, ids=lambda s: s.name)
def test_paper_rows_agree_with_the_means_the_papers_print(suite):
    """A transcription check: per-task numbers averaged as the paper says give its printed mean
    (each printed value is rounded to 0.1 or 0.01: tolerance 0.1)."""
    rows = papers(suite)
    assert sorted(rows) == sorted(METHODS)
    for method, row in rows.items():
        ours = averages(row.accuracy, suite, suite.tasks)
        if ours[row.mean_convention] is not None:
            assert abs(ours[row.mean_convention] - row.mean_reported) <= 0.1, method
        for group, printed in row.groups_reported.items():
            if printed is not None and ours.get(f'group:{group}') is not None:
                assert abs(ours[f'group:{group}'] - printed) <= 0.1, (method, group)
        assert 'Table' in row.source


def test_result_table_has_both_averages_and_the_paper_columns():
    paper = papers(VTAB)['ssf']
    results = {t: dict(accuracy=paper.accuracy[t] + 1.0, trainable_params=282724)
               for t in VTAB.tasks}
    table = ResultTable(VTAB, 'ssf', 'official', VTAB.tasks, results, paper)
    rows = {r.label: r for r in table.rows()}
    assert rows['mean of 19 tasks'].ours == pytest.approx(73.10 + 1.0, abs=0.01)
    assert rows['mean of 19 tasks'].paper == pytest.approx(73.10, abs=0.01)
    assert rows['mean of 3 group means'].paper == pytest.approx(75.70, abs=0.01)
    assert rows['Natural mean (7/7)'].diff == pytest.approx(1.0)
    md = table.markdown()
    assert '| dtd | Natural | 76.10 | 75.10 | +1.00 | 0.283 |' in md
    assert 'mean of the tasks' in md and 'Table 4' in md
    # a partial run averages what is done, the paper over the same tasks
    part = ResultTable(VTAB, 'ssf', 'official', VTAB.tasks, {'dtd': results['dtd']}, paper)
    rows = {r.label: r for r in part.rows()}
    assert rows['mean of 1 tasks'].paper == 75.1 and rows['Natural mean (1/7)'].ours == 76.1
    assert 'Structured mean' not in part.markdown()
    assert 'not run yet' in part.markdown()
    csv_lines = table.csv().splitlines()
    assert csv_lines[0].startswith('suite,method,protocol,row,group,ours,paper,diff')
    assert len(csv_lines) == 1 + 19 + 3 + 2


def test_result_table_uses_the_printed_means_of_a_row_without_task_numbers():
    """SNELL's VTAB-1k row holds only Table 1's group means: a run over a whole group shows the
    printed group mean, a run over every task the printed mean of its convention; a partial
    group shows none (the printed mean is over the whole group)."""
    paper = papers(VTAB)['snell']
    assert all(v is None for v in paper.accuracy.values())
    results = {t: dict(accuracy=80.0, trainable_params=1) for t in VTAB.tasks}
    rows = {r.label: r for r in ResultTable(VTAB, 'snell', 'official', VTAB.tasks, results,
                                            paper).rows()}
    assert (rows['Natural mean (7/7)'].paper, rows['Specialized mean (4/4)'].paper,
            rows['Structured mean (8/8)'].paper) == (82.7, 86.1, 61.8)
    assert rows['mean of 3 group means'].paper == 76.9  # the "groups" convention of its table
    assert rows['mean of 19 tasks'].paper is None
    natural = {t: results[t] for t in VTAB.tasks if VTAB.group_of[t] == 'Natural'}
    part = {t: results[t] for t in list(natural)[:3]}
    rows = {r.label: r for r in ResultTable(VTAB, 'snell', 'official', VTAB.tasks, part,
                                            paper).rows()}
    assert rows['Natural mean (3/7)'].paper is None and rows['mean of 1 group means'].paper is None
    rows = {r.label: r for r in ResultTable(VTAB, 'snell', 'official', VTAB.tasks, natural,
                                            paper).rows()}
    assert rows['Natural mean (7/7)'].paper == 82.7 and rows['mean of 7 tasks'].paper is None
    # a row with task numbers is unchanged: its means are computed from them
    ssf = papers(VTAB)['ssf']
    rows = {r.label: r for r in ResultTable(VTAB, 'ssf', 'official', VTAB.tasks, results,
                                            ssf).rows()}
    assert rows['mean of 19 tasks'].paper == pytest.approx(73.10, abs=0.01)


# ----------------------------------------------------------------------------------- readers
@pytest.fixture(scope='module')
def vtab_root(tmp_path_factory):
    return make_vtab1k(str(tmp_path_factory.mktemp('vtab')), tasks=('eurosat', 'kitti'),
                       img_size=16)


@pytest.fixture(scope='module')
def fgvc_root(tmp_path_factory):
    return make_fgvc(str(tmp_path_factory.mktemp('fgvc')),
                     datasets=('oxford_flowers', 'stanford_dogs'), img_size=16)


def infos(dataset):
    return [dataset.get_data_info(i) for i in range(len(dataset))]


def copy_task(src_root, task, tmp_path):
    dst = tmp_path / task
    shutil.copytree(osp.join(src_root, task), dst)
    return str(dst)


def test_generated_vtab1k_reads_with_the_stock_customdataset_and_vtab1k(vtab_root):
    from mmpretrain.datasets import CustomDataset
    root = osp.join(vtab_root, 'eurosat')
    for split, count in (('train800', 20), ('val200', 10), ('train800val200', 30),
                         ('test', 20)):
        stock = CustomDataset(data_root=root, ann_file=f'{split}.txt', data_prefix='')
        ours = VTAB1k(data_root=root, ann_file=f'{split}.txt')
        assert len(stock) == len(ours) == count
        assert infos(stock) == infos(ours) and len(infos(ours)) == count
        assert set(ours.get_gt_labels().tolist()) == set(range(10))
        assert all(osp.isfile(d['img_path']) for d in infos(ours))
    assert ours.task == 'eurosat' and ours.group == 'Specialized' and ours.num_classes == 10
    lines = open(osp.join(root, 'train800val200.txt')).read().split('\n')
    assert lines[0].startswith('images/train800val200/000000.jpg ')


def test_vtab1k_bad_data_errors(vtab_root, tmp_path):
    root = copy_task(vtab_root, 'kitti', tmp_path)
    with pytest.raises(ValueError, match='unknown VTAB-1k task .kittti.; the 19 tasks are: '
                                         'cifar, caltech101, .*smallnorb_ele'):
        VTAB1k(data_root=root, ann_file='test.txt', task='kittti')
    os.remove(osp.join(root, 'val200.txt'))
    with pytest.raises(FileNotFoundError, match=r'val200.txt does not exist \(split files in '
                                                r'.*: train800, train800val200, test'):
        VTAB1k(data_root=root, ann_file='val200.txt')
    with open(osp.join(root, 'test.txt'), 'a') as f:
        f.write('images/test/000000.jpg 4\n')  # kitti has 4 classes: 0..3
    with pytest.raises(ValueError, match=r'test.txt:9: label 4 is outside 0..3'):
        VTAB1k(data_root=root, ann_file='test.txt')
    os.remove(osp.join(root, 'images/train800/000003.jpg'))
    with pytest.raises(FileNotFoundError, match=r'train800.txt:4: image .*000003.jpg is listed '
                                                'but does not exist'):
        VTAB1k(data_root=root, ann_file='train800.txt')


def test_fgvc_reads_vpt_json_with_sorted_contiguous_labels(fgvc_root):
    root = osp.join(fgvc_root, 'OxfordFlowers')
    train = json.load(open(osp.join(root, 'train.json')))
    assert sorted(set(train.values()))[:3] == [3, 5, 7]  # generated ids: 3 + 2k
    ds = FGVC(data_root=root, dataset='oxford_flowers', split='train')
    assert len(ds) == 204 and set(ds.get_gt_labels().tolist()) == set(range(102))
    first = sorted(train)[0]
    info = next(d for d in infos(ds) if d['img_path'].endswith(first))
    assert info['gt_label'] == (train[first] - 3) // 2
    trainval = FGVC(data_root=root, dataset='oxford_flowers', split='trainval')
    assert len(trainval) == 204 + 102  # no trainval.json: train.json + val.json
    dogs = read_fgvc_split(osp.join(fgvc_root, 'StanfordDogs'), 'test', 120, 'Images')
    assert len(dogs) == 120 and '/Images/' in dogs[0][0]


def test_fgvc_bad_data_errors(fgvc_root, tmp_path):
    root = str(tmp_path / 'OxfordFlowers')
    shutil.copytree(osp.join(fgvc_root, 'OxfordFlowers'), root)
    with pytest.raises(ValueError, match="unknown FGVC dataset 'flowers'; the five are: cub, "):
        FGVC(data_root=root, dataset='flowers', split='test')
    with pytest.raises(ValueError, match='hold 102 class ids .* but the dataset has 200'):
        read_fgvc_split(root, 'test', 200)
    test = json.load(open(osp.join(root, 'test.json')))
    name = sorted(test)[0]
    test['extra/new.jpg'] = 9999  # a class id no other image has: 103 ids
    json.dump(test, open(osp.join(root, 'test.json'), 'w'))
    with pytest.raises(ValueError, match='hold 103 class ids'):
        FGVC(data_root=root, dataset='oxford_flowers', split='test')
    del test['extra/new.jpg']
    json.dump(test, open(osp.join(root, 'test.json'), 'w'))
    os.remove(osp.join(root, name))
    with pytest.raises(FileNotFoundError, match=rf'test.json: image .*{name}.* is listed but'):
        FGVC(data_root=root, dataset='oxford_flowers', split='test')
    os.remove(osp.join(root, 'val.json'))
    with pytest.raises(FileNotFoundError, match=r'val.json does not exist \(split files in .*: '
                                                r'train.json, test.json'):
        FGVC(data_root=root, dataset='oxford_flowers', split='trainval')


def test_generator_is_idempotent_and_never_writes_over_foreign_data(tmp_path, vtab_root):
    root = str(tmp_path / 'v')
    make_vtab1k(root, tasks=('kitti', ), img_size=16)
    stamp = os.stat(osp.join(root, 'kitti', 'test.txt')).st_mtime_ns
    make_vtab1k(root, tasks=('kitti', ), img_size=16)
    assert os.stat(osp.join(root, 'kitti', 'test.txt')).st_mtime_ns == stamp
    foreign = tmp_path / 'real' / 'kitti'
    foreign.mkdir(parents=True)
    (foreign / 'test.txt').write_text('images/test/0.jpg 1\n')
    with pytest.raises(FileExistsError, match='refusing to overwrite'):
        make_vtab1k(str(tmp_path / 'real'), tasks=('kitti', ))
    assert (foreign / 'test.txt').read_text() == 'images/test/0.jpg 1\n'


# ------------------------------------------------------------------- every recipe row builds
@pytest.fixture(scope='module')
def parsed_configs():
    """Every method config of both suites, parsed once (mmpretrain:: lookups memoised)."""
    spec = importlib.util.spec_from_file_location(
        'count_params', osp.join(ROOT, 'tools/analysis_tools/count_params.py'))
    count_params = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(count_params)
    paths = [s.method_config(m) for s in SUITES for m in METHODS]
    with count_params.metafile_lookups_cached():
        return {p: Config.fromfile(p) for p in paths}


TINY_ARCH = dict(_delete_=True, embed_dims=32, num_layers=2, num_heads=2,
                 feedforward_channels=64)


def _random_allocation(backbone_cfg, kind, out_dir):
    import torch
    from mmengine.registry import MODELS

    from mmssf.peft.spt import allocate, scored_parameters
    stock = {k: v for k, v in backbone_cfg.items()
             if k not in ('type', 'stock_type', 'peft', 'peft_checkpoint')}
    backbone = MODELS.build(dict(stock, type=backbone_cfg['stock_type']))
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=gen) ** 4
              for n, p in scored_parameters(backbone).items()}
    return allocate(scores, backbone, 3000, kind=kind, rank=2).save(str(out_dir))


@pytest.mark.parametrize('suite', SUITES, ids=lambda s: s.name)
def test_every_recipe_row_parses_and_applies_and_each_method_builds(suite, parsed_configs,
                                                                     tmp_path):
    """Every (method, task) row: the method config parses and the run config (task, splits,
    recipe) applies; per method, one run config is written out, re-read and its model built
    without weights at a small size (the slow tier builds every row at ViT-B/16 size)."""
    import logging

    from mmengine.logging import MMLogger
    from mmengine.registry import MODELS, init_default_scope
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # per-parameter init logs
    table = recipes(suite)
    init_default_scope('mmpretrain')
    for method in METHODS:
        base = parsed_configs[suite.method_config(method)]
        for task in suite.tasks:
            recipe = table[method][task]
            cfg = run_config(copy.deepcopy(base), suite, task, '/data',
                             *suite.splits['official'], recipe)
            assert cfg.model.head.num_classes == suite.classes[task]
            assert cfg.data_preprocessor.num_classes == suite.classes[task]
            assert cfg.model.backbone.drop_path_rate == recipe.drop_path
            assert cfg.optim_wrapper.optimizer.lr == recipe.lr
            assert cfg.optim_wrapper.optimizer.weight_decay == recipe.weight_decay
            assert cfg.optim_wrapper.optimizer.type == dict(adamw='AdamW', sgd='SGD')[
                recipe.optimizer]
            assert cfg.train_cfg.max_epochs == recipe.epochs
            assert cfg.param_scheduler[-1].end == recipe.epochs
            assert cfg.train_dataloader.batch_size == recipe.batch_size
            assert cfg.train_dataloader.dataset.pipeline == cfg.train_pipelines[recipe.train_aug]
            assert ('EMAHook' in [h['type'] for h in cfg.custom_hooks]) == \
                (recipe.ema_decay is not None)
            assert cfg.val_dataloader is None and cfg.test_dataloader.dataset.data_root == \
                osp.join('/data', suite.folder_of(task))
        if method == 'ssf':  # the harness writes run configs out in full: they read back
            path = tmp_path / f'{method}_{task}.py'
            cfg.dump(str(path))
            again = Config.fromfile(str(path))
            assert again.to_dict() == cfg.to_dict()
        backbone = cfg.model.backbone.to_dict()
        backbone.update(arch=TINY_ARCH, img_size=32, patch_size=16, init_cfg=None)
        if method.startswith('spt'):
            alloc = _random_allocation(backbone, method.split('-')[1], tmp_path / method)
            backbone['peft'] = dict(backbone['peft'], allocation=alloc)
        model_cfg = cfg.model.to_dict()
        model_cfg.update(backbone=backbone, head=dict(model_cfg['head'], in_channels=32))
        model = MODELS.build(model_cfg)
        assert model.head.layers.head.out_features == suite.classes[task]
        assert any(p.requires_grad for p in model.backbone.parameters()) == \
            (method != 'linear')


@pytest.mark.long
@pytest.mark.parametrize('suite', SUITES, ids=lambda s: s.name)
def test_every_recipe_row_builds_at_full_size(suite, parsed_configs):
    """ViT-B/16 at 224 px for every row (no weights) with the trainable count printed; the
    count of SSF on a 100-class task is the published 282,724."""
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmpretrain')
    table = recipes(suite)
    counts = {}
    for method in METHODS:
        if method.startswith('spt'):
            continue  # needs an allocation made on the data (spt_sensitivity.py)
        base = parsed_configs[suite.method_config(method)]
        for task in suite.tasks:
            cfg = run_config(copy.deepcopy(base), suite, task, '/data', *suite.splits['official'],
                             table[method][task])
            cfg.model.backbone.init_cfg = None
            model = MODELS.build(cfg.model)
            counts[method, task] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f'{suite.name} {method} {task}: trainable {counts[method, task]:,}')
    if suite is VTAB:
        assert counts['ssf', 'cifar'] == 282724
        assert counts['linear', 'cifar'] == 76900


# ---------------------------------------------------------------------------------- harness
def load_harness():
    spec = importlib.util.spec_from_file_location(
        'run_table', osp.join(ROOT, 'tools/benchmarks/run_table.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_harness_bad_data_fails_before_training_naming_the_problem(vtab_root, tmp_path):
    run_table = load_harness()
    work = str(tmp_path / 'work')

    def fails(argv, *messages):
        with pytest.raises(SystemExit) as err:
            run_table.main(['--suite', 'vtab1k', '--work-dir', work] + argv)
        for message in messages:
            assert message in str(err.value), str(err.value)

    fails(['--method', 'ssf', '--data-root', vtab_root, '--tasks', 'cifar100'],
          "unknown VTAB-1k task 'cifar100'; the 19 are: cifar, caltech101, dtd",
          'smallnorb_azi, smallnorb_ele')
    fails(['--method', 'sssf', '--data-root', vtab_root, '--tasks', 'kitti'],
          "no VTAB-1k recipe for method 'sssf'", 'ssf, rlrr, spt-lora')
    data = str(tmp_path / 'data')
    copy_task(vtab_root, 'kitti', tmp_path / 'data')
    kitti = osp.join(data, 'kitti')
    fails(['--method', 'ssf', '--data-root', data, '--tasks', 'eurosat'],
          "VTAB-1k eurosat: VTAB-1k 'eurosat': folder", 'does not exist')
    with open(osp.join(kitti, 'train800val200.txt'), 'a') as f:
        f.write('images/train800/000000.jpg 7\n')
    fails(['--method', 'ssf', '--data-root', data, '--tasks', 'kitti'],
          'train800val200.txt:13: label 7 is outside 0..3')
    shutil.rmtree(kitti)
    copy_task(vtab_root, 'kitti', tmp_path / 'data')
    os.remove(osp.join(kitti, 'images/test/000002.jpg'))
    fails(['--method', 'ssf', '--data-root', data, '--tasks', 'kitti'],
          'test.txt:3: image', '000002.jpg is listed but does not exist')
    os.remove(osp.join(kitti, 'test.txt'))
    fails(['--method', 'ssf', '--data-root', data, '--tasks', 'kitti'],
          'test.txt does not exist (split files in', 'train800, val200, train800val200;')
    assert not any(name.endswith('.pth') for _, _, names in os.walk(work) for name in names)


def test_harness_tasks_may_be_comma_separated(vtab_root, tmp_path):
    """``--tasks dtd,eurosat kitti`` is three tasks (a repeat counts once); a misspelled name in
    a comma list is named alone, with the valid ones."""
    run_table = load_harness()
    base = ['--suite', 'vtab1k', '--method', 'ssf', '--data-root', vtab_root]
    args = run_table.parse_args(base + ['--tasks', 'dtd,eurosat', 'kitti', 'dtd,'])
    assert args.tasks == ['dtd', 'eurosat', 'kitti']
    assert run_table.parse_args(base + ['--tasks', 'dtd', 'eurosat']).tasks == ['dtd', 'eurosat']
    with pytest.raises(SystemExit) as err:
        run_table.main(base + ['--work-dir', str(tmp_path), '--tasks', 'dtd,eurosatt'])
    assert "unknown VTAB-1k task 'eurosatt'; the 19 are: cifar" in str(err.value)


def test_harness_dry_run_writes_run_configs_and_counts_full_size(vtab_root, tmp_path, capsys):
    """--dry-run: the run config of each task is written and its ViT-B/16 model built without
    weights; SSF on the 100-class cifar task has the published 282,724 trainable parameters."""
    run_table = load_harness()
    data = make_vtab1k(str(tmp_path / 'data'), tasks=('cifar', 'kitti'), img_size=16)
    run_table.main(['--suite', 'vtab1k', '--method', 'ssf', '--data-root', data,
                    '--tasks', 'cifar', 'kitti', '--work-dir', str(tmp_path), '--dry-run'])
    out = capsys.readouterr().out
    assert 'cifar: ssf trainable params: 282,724 ||' in out
    assert 'kitti: ssf trainable params: 208,900 ||' in out  # 282,724 - 96 * 769
    assert 'train_scripts/vit/vtab/kitti/train_ssf.sh' in out
    assert 'data: 2 task(s) of' in out and 'checked (train800val200, test' in out
    # (no pretrained file here) said loudly, with the converter
    assert ('WARNING: pretrained weights pretrain/vit-base-p16_in21k_mmpretrain.pth do not '
            'exist' in out or 'WARNING: pretrained weights ' + ROOT in out)
    assert 'tools/model_converters/vit_timm_to_mm.py ViT-B_16.npz' in out
    cfg = Config.fromfile(str(tmp_path / 'vtab1k/ssf/official/kitti/dry_run/configs/train.py'))
    assert cfg.optim_wrapper.optimizer.lr == 1e-2 and cfg.model.head.num_classes == 4
    assert cfg.train_dataloader.dataset.ann_file == 'train800val200.txt'
    assert cfg.test_dataloader.dataset.ann_file == 'test.txt'
    assert cfg.train_dataloader.dataset.type == 'mmssf.VTAB1k'
    stock = Config.fromfile(str(tmp_path / 'vtab1k/ssf/official/kitti/dry_run/configs/stock.py'))
    assert stock.model.backbone.type == 'VisionTransformer' and 'custom_imports' not in stock


def test_harness_dry_run_checks_data_and_a_real_run_names_the_weights_converter(vtab_root,
                                                                                tmp_path):
    run_table = load_harness()
    base = ['--suite', 'vtab1k', '--method', 'ssf', '--tasks', 'kitti', '--work-dir',
            str(tmp_path / 'work')]
    with pytest.raises(SystemExit) as err:
        run_table.main(base + ['--data-root', str(tmp_path / 'nowhere'), '--dry-run'])
    assert 'the VTAB-1k data is not ready' in str(err.value)
    assert f'data root {tmp_path / "nowhere"} does not exist' in str(err.value)
    data = tmp_path / 'data'
    copy_task(vtab_root, 'kitti', data)
    os.remove(data / 'kitti' / 'test.txt')
    with pytest.raises(SystemExit) as err:
        run_table.main(base + ['--data-root', str(data), '--dry-run'])
    assert 'VTAB-1k kitti test:' in str(err.value) and 'test.txt does not exist' in str(err.value)
    # a real run without the pretrained file stops before training, naming the converter
    copy_task(vtab_root, 'kitti', tmp_path / 'data2')
    with pytest.raises(SystemExit) as err:
        run_table.main(base + ['--data-root', str(tmp_path / 'data2')])
    assert 'kitti/final: pretrained weights' in str(err.value)
    assert 'python tools/model_converters/vit_timm_to_mm.py ViT-B_16.npz ' \
        'pretrain/vit-base-p16_in21k_mmpretrain.pth --target mmpretrain' in str(err.value)
    assert not any(n.endswith('.pth') for _, _, names in os.walk(tmp_path / 'work')
                   for n in names)


def test_harness_help_lists_tasks_methods_and_defaults(capsys):
    run_table = load_harness()
    with pytest.raises(SystemExit):
        run_table.parse_args(['--help'])
    out = capsys.readouterr().out
    assert 'vtab1k tasks (19): cifar, caltech101, dtd' in out and 'smallnorb_ele' in out
    assert 'fgvc tasks (5): cub, nabirds' in out
    assert 'vtab1k methods (--method): adapter, adaptformer, bitfit' in out and 'spt-lora' in out
    assert '(default: official)' in out  # --protocol
    assert 'print (and write as markdown + CSV) the table beside the paper\'s numbers.' in out


# Tiny dims for end-to-end harness runs: appended to a generated config that inherits a real
# suite config (a 2-layer ViT on 32 px images, random init, no dataloader workers).
TINY_MODEL = '''
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=2, num_heads=2,
                            feedforward_channels=64),
                  img_size=32, patch_size=8, init_cfg=None),
    head=dict(in_channels=32))
train_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=tiny_test))
default_hooks = dict(logger=dict(interval=1))
'''
TINY = dict(vtab1k='''
tiny_test = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=32, backend='pillow'),
             dict(type='PackInputs')]
train_pipelines = dict(
    _delete_=True, none=tiny_test,
    flip=tiny_test[:2] + [dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                          dict(type='PackInputs')])
''' + TINY_MODEL, fgvc='''
tiny_test = [dict(type='LoadImageFromFile'),
             dict(type='ResizeEdge', scale=36, edge='short', backend='pillow'),
             dict(type='CenterCrop', crop_size=32), dict(type='PackInputs')]
train_pipelines = dict(
    _delete_=True,
    rrc_flip=[dict(type='LoadImageFromFile'),
              dict(type='RandomResizedCrop', scale=32, backend='pillow'),
              dict(type='RandomFlip', prob=0.5, direction='horizontal'), dict(type='PackInputs')],
    resize_crop_flip=[dict(type='LoadImageFromFile'),
                      dict(type='ResizeEdge', scale=36, edge='short', backend='pillow'),
                      dict(type='RandomCrop', crop_size=32),
                      dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                      dict(type='PackInputs')])
''' + TINY_MODEL)


def tiny_configs(tmp_path, suite, method):
    """``(method config, stock config)``: the real suite configs with tiny dims, named as the
    harness expects (``<method>_<stock name>``)."""
    folder = tmp_path / 'configs' / suite
    folder.mkdir(parents=True, exist_ok=True)
    real = osp.join(ROOT, 'configs', suite)
    stock = folder / f'vit-tiny_{suite}.py'
    stock.write_text(f"_base_ = {osp.join(real, f'vit-base-p16_in21k-pre_{suite}.py')!r}\n"
                     + TINY[suite])
    cfg = folder / f'{method}_vit-tiny_{suite}.py'
    cfg.write_text(f"_base_ = {osp.join(real, f'{method}_vit-base-p16_in21k-pre_{suite}.py')!r}"
                   '\n' + TINY[suite])
    return str(cfg), str(stock)


def harness(argv, timeout=HANG_TIMEOUT, env=None, **popen):
    cmd = [PY, 'tools/benchmarks/run_table.py'] + argv
    env = dict(env or os.environ, OMP_NUM_THREADS='1')  # tiny models: one thread is fastest
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **popen)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc.stdout


@pytest.mark.slow
def test_harness_runs_both_suites_for_two_methods_and_skips_finished_tasks(vtab_root,
                                                                            fgvc_root,
                                                                            tmp_path):
    """Acceptance: two VTAB-1k tasks and one FGVC dataset, SSF (merged checkpoints, weight EMA
    on FGVC) and VPT-deep (not mergeable), through tools/train.py / tools/test.py; the table
    has both averages and the paper columns; a second invocation trains nothing."""
    work = str(tmp_path / 'work')
    runs = dict(vtab1k=(vtab_root, ['eurosat', 'kitti']), fgvc=(fgvc_root, ['oxford_flowers']))
    for method in ('ssf', 'vpt-deep'):
        for suite, (data, tasks) in runs.items():
            config, _ = tiny_configs(tmp_path, suite, method)
            out = harness(['--suite', suite, '--method', method, '--data-root', data,
                           '--tasks'] + tasks + ['--work-dir', work, '--config', config,
                                                 '--epochs', '2', '--check-merged'])
            assert out.count('training on') == len(tasks)
            assert '| task | group | ours | paper | diff | trainable params (M) |' in out
            assert f'mean of {len(tasks)} tasks' in out and 'group means' in out
            for task in tasks:
                result = json.load(open(osp.join(work, suite, method, 'official', task,
                                                 'result.json')))
                assert result['eval_split'] == 'test' and result['trainable_params'] > 0
                assert result['train_split'] == get_suite(suite).splits['official'][0]
                if method == 'ssf':  # merged checkpoint on the stock config == tuned
                    assert result['evaluated'] == 'merged on stock config'
                    assert result['accuracy'] == result['accuracy_tuned']
                else:
                    assert result['evaluated'] == 'tuned (not mergeable)'
            table = open(osp.join(work, suite, method, 'official', 'table.csv')).read()
            assert table.count('\n') == 1 + len(tasks) + (2 if suite == 'vtab1k' else 0) + 2
    config, _ = tiny_configs(tmp_path, 'vtab1k', 'ssf')
    again = harness(['--suite', 'vtab1k', '--method', 'ssf', '--data-root', vtab_root,
                     '--tasks', 'eurosat', 'kitti', '--work-dir', work, '--config', config,
                     '--epochs', '2', '--check-merged'])
    assert 'training on' not in again and again.count('finished earlier') == 2
    assert '| eurosat | Specialized |' in again
    # another recipe (here: epochs) never reuses nor overwrites a finished result
    proc = subprocess.run([PY, 'tools/benchmarks/run_table.py', '--suite', 'vtab1k', '--method',
                           'ssf', '--data-root', vtab_root, '--tasks', 'eurosat', '--work-dir',
                           work, '--config', config, '--epochs', '3'], cwd=ROOT,
                          capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode != 0 and 'was made with another recipe' in proc.stderr


def with_kill_hook(config, checkpoint, work_dir_part):
    """``config`` plus the test-only hook that SIGKILLs the harness's process group once
    ``last_checkpoint`` names ``checkpoint`` in a work dir containing ``work_dir_part``
    (:mod:`fault_hooks`)."""
    hooks = [h.to_dict() if hasattr(h, 'to_dict') else dict(h)
             for h in Config.fromfile(config).get('custom_hooks', [])]
    hooks.append(dict(type='KillGroupAfterCheckpoint', checkpoint=checkpoint,
                      work_dir_part=work_dir_part))
    method, stock = osp.basename(config).split('_', 1)  # (the harness finds the stock config
    path = osp.join(osp.dirname(config), f'{method}-killed_{stock}')  # by this name)
    with open(path, 'w') as f:
        f.write(f'_base_ = {config!r}\n'
                "custom_imports = dict(imports=['mmssf', 'fault_hooks'], "
                'allow_failed_imports=False)\n'
                f'custom_hooks = {hooks!r}\n')
    return path


@pytest.mark.slow
def test_harness_resumes_a_killed_run(vtab_root, tmp_path):
    """Killed during the second task, by construction (the training process kills the harness's
    process group at the start of epoch 3, once epoch 2 is saved): the rerun skips the finished
    task and continues the unfinished training from epoch 2 — which the log must say, so the
    test cannot pass unless the kill happened there."""
    work = str(tmp_path / 'work')
    config, _ = tiny_configs(tmp_path, 'vtab1k', 'linear')
    config = with_kill_hook(config, 'epoch_2.pth', f'{os.sep}kitti{os.sep}')
    argv = ['--suite', 'vtab1k', '--method', 'linear', '--data-root', vtab_root, '--tasks',
            'eurosat', 'kitti', '--work-dir', work, '--config', config, '--epochs', '4',
            '--cfg-options', 'default_hooks.checkpoint.interval=1']
    out_dir = osp.join(work, 'vtab1k', 'linear', 'official')
    sentinel = str(tmp_path / 'killed.txt')
    env = dict(os.environ, MMSSF_TEST_KILL_SENTINEL=sentinel,
               PYTHONPATH=os.pathsep.join([osp.join(ROOT, 'tests'),
                                           os.environ.get('PYTHONPATH', '')]))
    proc = harness(argv, start_new_session=True, env=env)
    try:
        output = proc.communicate(timeout=HANG_TIMEOUT)[0]
    finally:
        if proc.poll() is None:  # (only a hung harness is still there)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, output[-3000:]
    assert open(sentinel).read().startswith(osp.join(out_dir, 'kitti', 'final'))
    assert osp.isfile(osp.join(out_dir, 'eurosat', 'result.json'))
    assert osp.isfile(osp.join(out_dir, 'kitti', 'final', 'epoch_2.pth'))
    assert not osp.isfile(osp.join(out_dir, 'kitti', 'final', 'epoch_3.pth'))
    assert not osp.isfile(osp.join(out_dir, 'kitti', 'result.json'))
    out = harness(argv, env=dict(os.environ, PYTHONPATH=env['PYTHONPATH']))
    assert 'eurosat: finished earlier' in out and 'kitti/final: resuming' in out
    assert '| kitti | Structured |' in out and 'not run yet' not in out
    log = open(osp.join(out_dir, 'kitti', 'final', 'run.log')).read()
    assert 'resumed epoch: 2' in log.lower(), log[-3000:]
    assert osp.isfile(osp.join(out_dir, 'kitti', 'final', 'epoch_4.pth'))


@pytest.mark.slow
def test_harness_val_protocol_selects_on_val_then_tests_on_test(vtab_root, tmp_path):
    work = str(tmp_path / 'work')
    config, _ = tiny_configs(tmp_path, 'vtab1k', 'linear')
    out = harness(['--suite', 'vtab1k', '--method', 'linear', '--data-root', vtab_root,
                   '--tasks', 'kitti', '--work-dir', work, '--config', config, '--epochs', '2',
                   '--protocol', 'val', '--lr-grid', '1e-4', '3e-2'])
    result = json.load(open(osp.join(work, 'vtab1k/linear/val/kitti/result.json')))
    assert [s['lr'] for s in result['selection']] == [1e-4, 3e-2]
    best = max(result['selection'], key=lambda s: s['accuracy'])
    assert result['lr'] == best['lr'] and result['train_split'] == 'train800val200'
    for s in ('select_lr0.0001_wd0.05', 'select_lr0.03_wd0.05'):
        run = json.load(open(osp.join(work, 'vtab1k/linear/val/kitti', s, 'run_result.json')))
        assert (run['train_split'], run['eval_split']) == ('train800', 'val200')
    assert 'chose lr' in out


@pytest.mark.parametrize('protocol', ['val', 'official'])
def test_harness_spt_budget_is_a_val_grid_or_the_fixed_official_one(vtab_root, tmp_path,
                                                                     monkeypatch, protocol):
    """val: the budget is one more grid (default: the official sweep 0.2M-1.0M of
    configs/vtab_supervised_spt_lora.sh), chosen on val200, then the chosen one trains on
    train800val200; official: the scripts state no per-task budget, so --spt-budget for every
    task. The table prints the budget of each task and where it came from. (Runs faked: the
    selection logic, not training, is under test here.)"""
    from mmssf.benchmarks import spt_budgets
    run_table = load_harness()
    args = run_table.parse_args(['--suite', 'vtab1k', '--method', 'spt-lora', '--data-root',
                                 vtab_root, '--tasks', 'kitti', '--work-dir', str(tmp_path),
                                 '--protocol', protocol])
    harness = run_table.Harness(args)
    on_val = {'0.2M': 50.0, '0.4M': 60.0, '0.6M': 70.0, '0.8M': 70.0, '1.0M': 55.0}
    calls = []

    def fake_run(task, name, train_split, eval_split, lr, wd, budget=None):
        calls.append((name, train_split, eval_split, budget))
        return dict(task=task, run=name, train_split=train_split, eval_split=eval_split, lr=lr,
                    weight_decay=wd, spt_budget=budget, trainable_params=1,
                    evaluated='tuned (not mergeable)',
                    accuracy=on_val[budget] if eval_split == 'val200' else 42.0)
    monkeypatch.setattr(harness, 'run', fake_run)
    result = harness.task('kitti')
    if protocol == 'val':
        assert spt_budgets.OFFICIAL_GRID == ('0.2M', '0.4M', '0.6M', '0.8M', '1.0M')
        assert [c[3] for c in calls] == list(spt_budgets.OFFICIAL_GRID) + ['0.6M']  # first best
        assert calls[0][:3] == ('select_b0.2M_lr0.001_wd0.0001', 'train800', 'val200')
        assert calls[-1][:3] == ('final', 'train800val200', 'test')
        assert [s['spt_budget'] for s in result['selection']] == list(spt_budgets.OFFICIAL_GRID)
        assert 'selected on val200' in result['spt_budget_source']
        assert 'vtab_supervised_spt_lora.sh' in result['spt_budget_source']
        assert result['signature']['spt_budget'] == list(spt_budgets.OFFICIAL_GRID)
    else:
        assert calls == [('final', 'train800val200', 'test', '0.4M')]
        assert 'state no per-task budget' in result['spt_budget_source']
        assert result['signature']['spt_budget'] == '0.4M'
    assert result['spt_budget'] == ('0.6M' if protocol == 'val' else '0.4M')
    md = harness.table().markdown()
    assert '| kitti | Structured | 42.00 |' in md and f'SPT budget {result["spt_budget"]} |' in md
    assert f'SPT budget: {result["spt_budget_source"]}.' in md
    with pytest.raises(SystemExit, match='SPT budget: cannot read the budget'):
        run_table.Harness(run_table.parse_args(
            ['--suite', 'vtab1k', '--method', 'spt-lora', '--data-root', vtab_root,
             '--work-dir', str(tmp_path), '--spt-budget-grid', '0.4M', 'lots']))
