"""The merged twin holds the weights its ``X.pth`` holds, also when a hook before
``ReparamCheckpointHook`` replaced them in the checkpoint (mmengine's ``EMAHook`` swaps in the
averaged weights)."""
from types import SimpleNamespace

import torch

from conftest import build_backbone, randomize_peft
from mmssf.engine import ReparamCheckpointHook
from mmssf.peft import apply_peft, get_peft


def test_twin_is_merged_from_the_checkpoint_weights(tmp_path):
    model, _ = build_backbone('mmpretrain_swin')
    apply_peft(model, dict(type='SSF'))
    randomize_peft(model)
    ema = {k: v.clone() + 0.01 * torch.randn_like(v) if v.is_floating_point() else v.clone()
           for k, v in model.state_dict().items()}  # what an EMAHook would have swapped in
    checkpoint = {'meta': {}, 'state_dict': ema}
    hook = ReparamCheckpointHook()
    runner = SimpleNamespace(model=model)
    hook.before_save_checkpoint(runner, checkpoint)
    hook._write_twin(runner, str(tmp_path / 'iter_1.pth'), {}, state=hook._pending_state)
    twin = torch.load(tmp_path / 'iter_1_merged.pth', weights_only=True)['state_dict']

    expected, _ = build_backbone('mmpretrain_swin')
    apply_peft(expected, dict(type='SSF'))
    expected.load_state_dict(ema)
    get_peft(expected).merge(expected)
    assert set(twin) == set(expected.state_dict())
    assert all(torch.allclose(twin[k], v, atol=1e-6) for k, v in expected.state_dict().items())
    live_merged = {k: v for k, v in model.state_dict().items()}  # the live model is untouched
    assert any('ssf_' in k for k in live_merged)
