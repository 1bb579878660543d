"""CI learning check: every method *learns* — what the exactness tests cannot show.

Real images shipped inside an installed package: scikit-learn's handwritten digits (UCI, 8x8,
upscaled to 16x16 RGB). A tiny ViT (6 layers, 32 dims, 4 px patches) is pretrained here on
digits 0-4; each method then tunes it on digits 5-9 (60 training images per class, 546 test
images) through ``tools/train.py`` with the VTAB-1k configs of ``configs/vtab1k/`` (tiny dims,
the stock CustomDataset reading the VTAB-1k layout). Asserted, seeded, on CPU:

* every method beats the linear probe (same pretrained backbone, only the head trained, its
  learning rate the best of a small sweep) by ``MARGIN`` points of test accuracy;
* the merged checkpoint of every mergeable method, evaluated with the *stock* config, gives the
  tuned model's accuracy;
* the check can fail: SSF trained with an optimizer constructor that drops the PEFT parameters
  (only the head reaches the optimizer) does *not* beat the linear probe by the margin.

All runs go through ``tools/train.py`` / ``tools/test.py`` (and ``spt_sensitivity.py`` for SPT),
each as ``__main__`` with ``runpy`` in one of two driver subprocesses, so that the imports are
paid twice, not forty times (the check must fit in about 3 minutes on 2 cores). Learning rates:
one per method, chosen once on this task (not per run). Measured: linear 59.2, ssf 78.0,
bitfit 72.0, lora 78.0, rlrr 79.3, adapter 78.2, vpt-deep 69.4, vpt-shallow 66.1, spt-lora
79.1, spt-adapter 81.1, full 81.5; SSF with the PEFT parameters dropped from the optimizer 56.4.
AdaptFormer-8 (added later): 78.6 against the linear probe's 63.0 in the same run. The zoo
methods outside the VTAB-1k suite (``OUTSIDE``: their PEFT lines on the suite's stock config,
written here) and their first measure, against the linear probe's 59.2: Adapter+ 76.7, FacT-TT
(d=8) 80.8, FacT-TK (d=8) 78.4, GLoRA 75.6 (its support searched first by ``glora_search.py``:
supernet with this recipe, 2 search rounds scored on val200, under 8k parameters); the same
figures in the whole check with them (linear 59.2), which took 1,314 s with the 2 cores shared
(load average 12-18; the four add roughly 40 % to the check's CPU time).
Cost: ~170 s of CPU time in all (two single-thread drivers: ~1.5 min on 2 idle cores; 4 min on
a 2-core machine shared with other jobs).
"""
import json
import os
import os.path as osp
import subprocess

import numpy as np
import pytest
import torch

from mmssf.datasets.generate_classification import write_vtab1k_task
from mmssf.peft.registry_facts import suite_methods, zoo_methods
from runner_utils import HANG_TIMEOUT, PY, ROOT

PRE_CLASSES, TUNE_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
TRAIN_PER_CLASS, VAL_PER_CLASS = 60, 10
ARCH = dict(embed_dims=32, num_layers=6, num_heads=2, feedforward_channels=64)
IMG, PATCH = 16, 4
INVERT_TUNE = False
MARGIN = 3.0  # test-accuracy points over the linear probe
EPOCHS = 12
# config prefix in configs/vtab1k/ -> (lr, peft options over the config's) for this tiny task
RECIPES = {
    'linear': (0.1, {}),
    'ssf': (0.03, {}),
    'bitfit': (0.03, {}),
    'lora': (0.01, {}),
    'rlrr': (0.03, {}),
    'snell': (0.03, dict(r=8)),
    'adapter': (0.1, {}),
    'adaptformer': (0.1, {}),
    'vpt-deep': (0.1, dict(num_prompts=8)),
    'vpt-shallow': (0.1, dict(num_prompts=16)),
    'spt-lora': (0.01, {}),
    'spt-adapter': (0.03, {}),
    'full': (0.002, {}),
}
#: every method of the VTAB-1k suite (from the method cards) -> (config prefix, lr, peft options),
#: in the order above (the two drivers split the runs by position)
METHODS = {prefix: (prefix, ) + recipe for prefix, recipe in RECIPES.items()
           if prefix in suite_methods('vtab1k')}
#: zoo methods outside the VTAB-1k suite -> (lr, peft dict): each runs from a config written here
#: as a suite method config is (the suite's stock config + its PEFT lines)
OUTSIDE = {
    'adapterplus': (0.03, dict(type='AdapterPlus')),
    'fact-tt': (0.03, dict(type='FacTTT', r=8, scale=1.0)),
    'fact-tk': (0.03, dict(type='FacTTK', r=8, scale=1.0)),
    'glora': (0.01, dict(type='GLoRA')),  # (its support: glora_search.py, below)
}
METHODS.update({prefix: (prefix, ) + recipe for prefix, recipe in OUTSIDE.items()})
MERGEABLE = tuple(prefix for prefix in METHODS if zoo_methods()[prefix].mergeable)
SPT_BUDGET = '6k'
GLORA_LIMIT = '8k'  # (the tiny ViT's largest supports: 25k)
SUITE_STYLE = """_base_ = {base!r}
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                           peft={peft!r}))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'),
                dict(type='mmssf.TrainableParamsReportHook')]
vtab1k = dict(type='mmssf.VTAB1k')
train_dataloader = dict(dataset=vtab1k)
test_dataloader = dict(dataset=vtab1k)
"""
#: GLoRA's search scores its candidates on the val split (val200), as the official on val
GLORA_SEARCH = """_base_ = {base!r}
val_dataloader = dict(_delete_=True, batch_size=256, num_workers=0, persistent_workers=False,
                      dataset=dict(type='CustomDataset', data_root={task!r},
                                   ann_file='val200.txt',
                                   pipeline=[dict(type='LoadImageFromFile'),
                                             dict(type='PackInputs')]))
val_evaluator = dict(_delete_=True, type='Accuracy', topk=(1, ))
val_cfg = dict(_delete_=True)
train_cfg = dict(val_interval={epochs})
"""


def digits():
    """(images (n, 16, 16, 3) uint8, labels (n,)) of scikit-learn's digits (UCI, 1,797)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # a missing dependency must not pass as a skip
        pytest.fail(f'the learning check needs scikit-learn (requirements/tests.txt): {err}')
    data = load_digits()
    images = np.kron(data.images, np.ones((2, 2)))  # 8x8 -> 16x16, 0..16 -> 0..255
    images = np.clip(np.rint(images * 255 / 16), 0, 255).astype(np.uint8)
    return np.repeat(images[..., None], 3, axis=-1), data.target


def write_tune_task(root):
    """Digits 5-9 (labels 0-4) in the VTAB-1k task layout: train800 / val200 / test lists."""
    images, labels = digits()
    if INVERT_TUNE:
        images = 255 - images
    splits = dict(train800=[], val200=[], test=[])
    for new, digit in enumerate(TUNE_CLASSES):
        idx = np.flatnonzero(labels == digit)
        splits['train800'] += [(images[i], new) for i in idx[:TRAIN_PER_CLASS]]
        splits['val200'] += [(images[i], new)
                             for i in idx[TRAIN_PER_CLASS:TRAIN_PER_CLASS + VAL_PER_CLASS]]
        splits['test'] += [(images[i], new) for i in idx[TRAIN_PER_CLASS + VAL_PER_CLASS:]]
    write_vtab1k_task(root, splits)
    return root, len(splits['test'])


def pretrain_backbone(path, seed=0, epochs=30):
    """A tiny mmpretrain ViT trained on digits 0-4 here; saves backbone-level keys."""
    import logging

    from mmengine.logging import MMLogger
    from mmpretrain.models.backbones import VisionTransformer
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # per-parameter init logs
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images, labels = digits()
    keep = np.isin(labels, PRE_CLASSES)
    x = torch.tensor(images[keep], dtype=torch.float32).permute(0, 3, 1, 2)
    x = (x - 127.5) / 127.5
    y = torch.tensor(labels[keep])
    backbone = VisionTransformer(arch=ARCH, img_size=IMG, patch_size=PATCH, out_type='cls_token',
                                 drop_rate=0.0)
    backbone.init_weights()
    head = torch.nn.Linear(ARCH['embed_dims'], len(PRE_CLASSES))
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    backbone.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            loss = torch.nn.functional.cross_entropy(head(backbone(x[batch])[-1]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(backbone.state_dict(), path)
    torch.set_num_threads(threads)
    return path


TINY = '''
model = dict(
    backbone=dict(arch=dict(_delete_=True, **{arch}), img_size={img}, patch_size={patch},
                  init_cfg=dict(type='Pretrained', checkpoint={pretrained!r}){peft}),
    head=dict(in_channels={dims}, num_classes=5))
data_preprocessor = dict(num_classes=5)
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_pipelines = dict(none=pipeline, flip=pipeline)
train_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False,
                        dataset=dict(type='CustomDataset', data_root={task!r},
                                     ann_file='train800.txt', pipeline=pipeline))
test_dataloader = dict(batch_size=256, num_workers=0, persistent_workers=False,
                       dataset=dict(type='CustomDataset', data_root={task!r},
                                    ann_file='test.txt', pipeline=pipeline))
optim_wrapper = dict(optimizer=dict(lr={lr}, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=2, end={epochs},
         convert_to_iter_based=True)]
train_cfg = dict(max_epochs={epochs})
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval={epochs}))
randomness = dict(seed=0, deterministic=True)
'''


def write_config(path, base, task, pretrained, lr, peft=None, extra=''):
    text = f'_base_ = {base!r}\n' + TINY.format(
        arch=ARCH, img=IMG, patch=PATCH, pretrained=pretrained, dims=ARCH['embed_dims'],
        task=task, lr=lr, epochs=EPOCHS,
        peft=f',\n                  peft={peft!r}' if peft else '') + extra
    with open(path, 'w') as f:
        f.write(text)
    return path


BROKEN_CONSTRUCTOR = '''
"""Test-only: an optimizer constructor that loses the PEFT parameters (keeps only the head)."""
from mmssf.engine.optim_constructor import PeftOptimWrapperConstructor
from mmssf.registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DropsPeftParams(PeftOptimWrapperConstructor):
    def add_params(self, params, module, prefix='', is_dcn_module=None):
        super().add_params(params, module, prefix, is_dcn_module)
        if not prefix:
            names = {id(p): n for n, p in module.named_parameters()}
            params[:] = [g for g in params if not names[id(g['params'][0])].startswith('backbone.')]
'''

DRIVER = '''
"""Runs tools (train / test / sensitivity) as __main__ one after another in this process."""
import json, os, runpy, sys
sys.path.insert(0, os.getcwd())
sys.path.insert(0, {extra_path!r})
for job in json.load(open(sys.argv[1])):
    sys.argv = job
    print('>>>', ' '.join(job), flush=True)
    runpy.run_path(job[0], run_name='__main__')
'''


def test_every_suite_method_has_a_learning_recipe():
    """A method joining the VTAB-1k suite (its card) joins this check: it needs an lr here."""
    missing = sorted(set(suite_methods('vtab1k')) - set(RECIPES))
    assert not missing, f'no learning-check recipe (lr, options) for {missing}'
    assert set(RECIPES) <= set(suite_methods('vtab1k')), set(RECIPES) - set(suite_methods('vtab1k'))
    # the methods outside the suite run here from their own PEFT lines; one joining the suite
    # moves to RECIPES (its suite config)
    assert not set(OUTSIDE) & set(suite_methods('vtab1k')), set(OUTSIDE) & set(RECIPES)
    assert set(OUTSIDE) <= set(zoo_methods())


def test_every_method_learns_beyond_the_linear_probe(tmp_path):
    task, num_test = write_tune_task(str(tmp_path / 'digits'))
    pretrained = pretrain_backbone(str(tmp_path / 'pretrained.pth'))
    (tmp_path / 'broken_constructor.py').write_text(BROKEN_CONSTRUCTOR)
    stock_base = osp.join(ROOT, 'configs/vtab1k/vit-base-p16_in21k-pre_vtab1k.py')
    stock = write_config(str(tmp_path / 'stock.py'), stock_base, task, pretrained, 1e-3)

    runs, spt_jobs = {}, {}
    for name, (prefix, lr, peft) in METHODS.items():
        base = osp.join(ROOT, f'configs/vtab1k/{prefix}_vit-base-p16_in21k-pre_vtab1k.py')
        if name in OUTSIDE:
            if name == 'glora':
                peft = dict(peft, support=str(tmp_path / name / 'glora' / 'glora_support.json'))
            base = str(tmp_path / f'{name}_suite_style.py')
            with open(base, 'w') as f:
                f.write(SUITE_STYLE.format(base=stock_base, peft=peft))
            peft = {}
        if name.startswith('spt'):
            peft = dict(peft, allocation=str(tmp_path / name / 'spt' / 'allocation.json'))
        cfg = write_config(str(tmp_path / f'{name}.py'), base, task, pretrained, lr, peft)
        work = str(tmp_path / name)
        if name.startswith('spt'):
            spt_jobs[name] = [['tools/analysis_tools/spt_sensitivity.py', cfg, '--budget',
                               SPT_BUDGET, '--samples', '200', '--rank', '2']]
        if name == 'glora':  # supernet (this recipe) + a short search, then the found support
            search = str(tmp_path / 'glora_search.py')
            with open(search, 'w') as f:
                f.write(GLORA_SEARCH.format(base=cfg, task=task, epochs=EPOCHS))
            spt_jobs[name] = [['tools/analysis_tools/glora_search.py', search, '--params',
                               GLORA_LIMIT, '--epochs', '2', '--population', '8', '--select',
                               '4', '--mutation', '4', '--crossover', '4']]
        runs[name] = (cfg, work)
    broken_extra = ("custom_imports = dict(imports=['mmssf', 'broken_constructor'], "
                    "allow_failed_imports=False)\n"
                    "optim_wrapper = dict(constructor='mmssf.DropsPeftParams')\n")
    base = osp.join(ROOT, 'configs/vtab1k/ssf_vit-base-p16_in21k-pre_vtab1k.py')
    runs['ssf-broken'] = (write_config(str(tmp_path / 'ssf-broken.py'), base, task, pretrained,
                                       METHODS['ssf'][1], extra=broken_extra),
                          str(tmp_path / 'ssf-broken'))
    # two drivers, one thread each (tiny matrices: one thread is fastest, and two threads on a
    # loaded 2-core machine run ~30x slower), each running its share of the methods in order
    queues = [[], []]
    for index, (name, (cfg, work)) in enumerate(runs.items()):
        ckpt = osp.join(work, f'epoch_{EPOCHS}.pth')
        jobs = spt_jobs.get(name, []) + [
            ['tools/train.py', cfg, '--work-dir', work],
            ['tools/test.py', cfg, ckpt, '--work-dir', work + '/test_tuned', '--out',
             work + '/tuned.json']]
        if name in MERGEABLE:
            jobs.append(['tools/test.py', stock, osp.join(work, f'epoch_{EPOCHS}_merged.pth'),
                         '--work-dir', work + '/test_merged', '--out', work + '/merged.json'])
        queues[index % 2] += jobs
    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER.format(extra_path=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    procs = []
    for index, queue in enumerate(queues):
        (tmp_path / f'jobs{index}.json').write_text(json.dumps(queue))
        procs.append(subprocess.Popen(
            [PY, str(driver), str(tmp_path / f'jobs{index}.json')], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        output = proc.communicate(timeout=HANG_TIMEOUT)[0]
        assert proc.returncode == 0, output[-6000:]

    def acc(name, kind):
        with open(tmp_path / name / f'{kind}.json') as f:
            return json.load(f)['accuracy/top1']

    tuned = {name: acc(name, 'tuned') for name in runs}
    report = ', '.join(f'{n} {a:.1f}' for n, a in tuned.items())
    print(f'\nlearning check ({num_test} test images of digits 5-9): {report}')
    linear = tuned['linear']
    for name in METHODS:
        if name != 'linear':
            assert tuned[name] >= linear + MARGIN, \
                f'{name} ({tuned[name]:.2f}) does not beat the linear probe ({linear:.2f}) ' \
                f'by {MARGIN} points: {report}'
    for name in MERGEABLE:
        assert acc(name, 'merged') == tuned[name], f'{name}: merged != tuned on the stock config'
    # the check has teeth: losing the PEFT parameters in the optimizer is caught
    assert tuned['ssf-broken'] < linear + MARGIN, report
    assert tuned['ssf-broken'] < tuned['ssf'] - MARGIN, report
