"""The README's Python API example runs as written (tiny random-init ViT, nothing downloaded),
prints the trainable-parameter line its comment shows, and the option error it quotes is the
one the code raises today."""
import contextlib
import io
import os.path as osp
import re

import pytest

from runner_utils import ROOT

MARKER = '<!-- readme-example: tests/test_readme_example.py runs the next python block -->'


def _readme():
    with open(osp.join(ROOT, 'README.md')) as f:
        return f.read()


def _example():
    text = _readme()
    assert MARKER in text, 'the README lost its tested example marker'
    block = re.search(r'```python\n(.*?)```', text[text.index(MARKER):], re.S)
    assert block, f'no python block after {MARKER}'
    return block.group(1)


def test_readme_python_example_runs():
    code = _example()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, 'README.md (python example)', 'exec'), {'__name__': 'readme'})
    # the comment beside print_trainable_parameters shows the start of what it prints
    shown = re.search(r'print_trainable_parameters\(backbone\)\s+# (.+?)\.\.\.', code).group(1)
    line = printed.getvalue().splitlines()[0]
    assert line.startswith(shown.strip()), (line, shown)
    assert re.fullmatch(r'trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| '
                        r'trainable%: \d+\.\d{4}', line)


def test_readme_quoted_option_error_is_current():
    from mmssf.peft import OptionError, build_peft
    quoted = re.search(r"`dict\(type='LoRA', rank=16\)` fails with\s+``(.+?)``", _readme(), re.S)
    assert quoted, 'the README no longer quotes the LoRA option error'
    with pytest.raises(OptionError) as err:
        build_peft(dict(type='LoRA', rank=16))
    assert ' '.join(quoted.group(1).split()) == str(err.value)
