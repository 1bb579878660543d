"""``benchmarks/gpu_proof.sh --device cpu --dry-run``: every step of the GPU proof is planned, and
every file, option and benchmark argument it uses exists, so that the script cannot rot while no
GPU runs it."""
import os
import subprocess
import sys

from runner_utils import ROOT

STEPS = ('setup', 'tests', 'runner_flows', 'data', 'dist_train', 'peft_cost')


def _proof(*args):
    return subprocess.run(['bash', 'benchmarks/gpu_proof.sh', *args], cwd=ROOT,
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                          text=True, timeout=300)


def test_dry_run_plans_every_step_and_checks_its_inputs(tmp_path):
    out = tmp_path / 'proof'
    result = _proof('--device', 'cpu', '--dry-run', '--out', str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    plan = (out / 'plan.txt').read_text()
    planned = [line.split(':', 1)[0] for line in plan.splitlines() if ': ' in line]
    assert [s for s in planned if s in STEPS] == list(STEPS)
    assert '--device cpu' in plan and 'tools/dist_train.sh configs/demo/' in plan
    assert 'peft_cost.py would run: cost table on cpu, models vit,swin' in plan
    assert 'batch 32' in plan
    summary = (out / 'summary.txt').read_text()
    assert 'all steps passed (dry run' in summary and 'missing' not in summary


def test_bad_arguments_name_the_valid_ones(tmp_path):
    result = _proof('--device', 'tpu', '--out', str(tmp_path))
    assert result.returncode == 2 and "--device 'tpu': choose cuda or cpu" in result.stderr
    result = _proof('--gpus', '2', '--out', str(tmp_path))
    assert result.returncode == 2 and 'unknown argument' in result.stderr
    assert '--dry-run' in result.stderr
