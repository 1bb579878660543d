"""Helpers for tests that run the real tools in subprocesses on generated data."""
import json
import os
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'tests', 'configs')
PY = sys.executable
# A guard against a hung child, not a speed limit: no test passes or fails by how fast the
# machine is (a loaded 2-core machine runs these tiny trainings several times slower).
HANG_TIMEOUT = 3600


def run_tool(args, cwd=ROOT, timeout=HANG_TIMEOUT, env=None):
    """Run ``python <args>`` in the repo root; return stdout+stderr, raise with the tail on failure."""
    full_env = dict(os.environ, OMP_NUM_THREADS='2', **(env or {}))
    result = subprocess.run([PY] + list(args), cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=full_env)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f'{" ".join(args)} failed ({result.returncode}):\n{output[-4000:]}')
    return output


def write_peft_config(path, base, stock_type, peft):
    """A PEFT config: the stock ``base`` plus the few lines a user adds."""
    with open(path, 'w') as f:
        f.write(f'''_base_ = {base!r}
custom_imports = dict(imports=['mmssf'], allow_failed_imports=False)
model = dict(backbone=dict(type='mmssf.PeftBackbone', stock_type={stock_type!r}, peft={peft!r}))
optim_wrapper = dict(constructor='mmssf.PeftOptimWrapperConstructor')
custom_hooks = [dict(type='mmssf.ReparamCheckpointHook'), dict(type='mmssf.TrainableParamsReportHook')]
''')
    return str(path)


def data_options(root, coco=False):
    """``--cfg-options`` pointing every dataloader (and, for COCO, the evaluators) at ``root``."""
    opts = [f'{loader}.dataset.data_root={root}'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    if coco:
        opts += [f'{e}.ann_file={root}annotations/instances_val2017.json'
                 for e in ('val_evaluator', 'test_evaluator')]
    return opts


def read_json(path):
    with open(path) as f:
        return json.load(f)
