"""Every Python tool answers ``--help`` before importing torch or mmssf (parsing comes first), so
it answers at once; the measured times are in the README, not in a test."""
import glob
import json
import os.path as osp
import subprocess
import sys

from runner_utils import HANG_TIMEOUT, ROOT

PROBE = r'''
import json, runpy, sys
found = {}
for tool in sys.argv[1:]:
    sys.argv = [tool, '--help']
    try:
        runpy.run_path(tool, run_name='__main__')
        status = None
    except SystemExit as exit:
        status = exit.code
    found[tool] = dict(status=status, heavy=sorted(m for m in ('torch', 'mmssf') if m in sys.modules))
    if found[tool]['heavy']:
        break  # (later tools would inherit the imports)
print(json.dumps(found))
'''


def test_help_parses_before_heavy_imports():
    tools = sorted(osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'tools', '**', '*.py'),
                                                              recursive=True))
    assert 'tools/train.py' in tools and 'tools/model_converters/merge_peft.py' in tools
    result = subprocess.run([sys.executable, '-c', PROBE] + tools, cwd=ROOT, capture_output=True,
                            text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert {t: f for t, f in found.items() if f['heavy'] or f['status'] != 0} == {}
    assert sorted(found) == tools
    assert 'usage:' in result.stdout
