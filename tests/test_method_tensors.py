"""Method-level tensors through the public contract only: a toy method defined here, a rank-1
update ``ΔW = b aᵀ`` on every qkv with ONE ``a`` shared by all of them (the shape of FacT's /
VeRA's shared factors), merges exactly, round-trips its PEFT-only file, is seen by the checkpoint
check and the optimizer constructor, and appears in every registry-derived list."""
import importlib.util
import os.path as osp

import pytest
import torch

from conftest import build_backbone, flatten_outputs, randomize_peft
from mmssf.peft import (DeltaWeightUnit, MethodCard, Option, PeftMethod, apply_peft, get_peft,
                        load_peft, save_peft)
from mmssf.registry import PEFT_METHODS
from runner_utils import ROOT


class SharedRank1Unit(DeltaWeightUnit):
    option_spec = dict(r=Option(1, int, min=1, max=1, doc='rank (one shared factor)'))
    prefixes = ('toyshared_b', )

    @classmethod
    def count(cls, fan_in, fan_out, r):
        return fan_out  # (+ the shared a, once per method)

    def create(self, fan_in, rows):
        self.add_parameter('toyshared_b', torch.zeros(rows))
        self.shared = self.method.shared_factor(self.backbone, fan_in)

    def delta(self):
        return torch.outer(self.module.toyshared_b, self.shared)


class SharedRank1(PeftMethod):
    """Toy: ``ΔW = b aᵀ`` on every qkv, one ``a`` for the whole backbone."""
    unit_cls = SharedRank1Unit
    default_targets = ('qkv', )
    method_prefixes = method_no_decay = ('toyshared_a', )
    card = MethodCard(zoo='toy-shared', folder='toy', suites=('vtab1k', ), label='toy',
                      count='out per qkv + in (shared)')

    def create_method_tensors(self, backbone):
        self.add_method_parameter(backbone, 'toyshared_a', torch.randn(32) * 0.1)

    def shared_factor(self, backbone, dim):
        return getattr(backbone, 'toyshared_a')


@pytest.fixture
def registered():
    PEFT_METHODS.register_module(module=SharedRank1)
    yield SharedRank1
    PEFT_METHODS.module_dict.pop('SharedRank1')


@pytest.mark.parametrize('backbone_name', ['mmpretrain_vit', 'mmseg_vit'])
def test_shared_factor_merges_exactly(registered, backbone_name):
    model, size = build_backbone(backbone_name)
    stock, _ = build_backbone(backbone_name, seed=123)
    stock_keys = set(model.state_dict())
    method = apply_peft(model, dict(type='SharedRank1'))
    randomize_peft(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert 'toyshared_a' in trainable and len(trainable) == 1 + 2  # a + one b per qkv
    assert method.num_trainable(model) == 32 + 2 * 96
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        before = flatten_outputs(build_backbone(backbone_name)[0](x))
        tuned = flatten_outputs(model(x))
        assert max((t - b).abs().max().item() for t, b in zip(tuned, before)) > 1e-4
        method.merge(model)
        merged = flatten_outputs(model(x))
    assert get_peft(model) is None and set(model.state_dict()) == stock_keys
    stock.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        for t, m, s in zip(tuned, merged, flatten_outputs(stock(x))):
            assert (t - m).abs().max().item() <= 1e-5 and (t - s).abs().max().item() <= 1e-5


def test_shared_factor_round_trips_its_peft_file(registered, tmp_path):
    model, size = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='SharedRank1'))
    randomize_peft(model)
    path = str(tmp_path / 'toy.pth')
    save_peft(path=path, backbone=model)
    saved = torch.load(path, weights_only=True)['state_dict']
    assert set(saved) == {'toyshared_a', 'layers.0.attn.qkv.toyshared_b',
                          'layers.1.attn.qkv.toyshared_b'}
    fresh, _ = build_backbone('mmpretrain_vit')
    torch.manual_seed(7)  # another init of the shared factor
    apply_peft(fresh, dict(type='SharedRank1'))
    assert not torch.equal(fresh.toyshared_a, model.toyshared_a)
    load_peft(path=path, backbone=fresh)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        for a, b in zip(flatten_outputs(model(x)), flatten_outputs(fresh(x))):
            assert torch.equal(a, b)


def test_shared_factor_in_the_checkpoint_check_and_the_optimizer(registered):
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    from mmssf.engine.checkpoint_check import CheckpointMismatchError, check_checkpoint, peft_keys
    model, _ = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='SharedRank1'))
    assert 'toyshared_a' in peft_keys(model)
    check_checkpoint(model, {'state_dict': model.state_dict()})
    stock, _ = build_backbone('mmpretrain_vit')
    with pytest.raises(CheckpointMismatchError, match=r'toyshared_a(.|\n)*SharedRank1'):
        check_checkpoint(stock, {'state_dict': model.state_dict()})
    partial = {k: v for k, v in model.state_dict().items() if k != 'toyshared_a'}
    with pytest.raises(CheckpointMismatchError, match='missing.*toyshared_a'):
        check_checkpoint(model, {'state_dict': partial}, resume=True)
    with pytest.raises(CheckpointMismatchError, match='merged / stock checkpoint.*SharedRank1'):
        check_checkpoint(model, {'state_dict': stock.state_dict()}, resume=True)
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='mmssf.PeftOptimWrapperConstructor',
        optim_wrapper_cfg=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))))
    groups = constructor(model).optimizer.param_groups
    decay = {id(g['params'][0]): g['weight_decay'] for g in groups}
    assert decay[id(model.toyshared_a)] == 0.0
    assert decay[id(model.layers[0].attn.qkv.toyshared_b)] == 0.05
    assert len(groups) == 3


def test_shared_factor_appears_in_every_registry_derived_list(registered):
    from mmssf.peft.registry_facts import (method_classes, methods_of_tensor, no_decay_prefixes,
                                           suite_methods, zoo_folders, zoo_methods)
    assert SharedRank1 in method_classes()
    assert methods_of_tensor('backbone.toyshared_a') == 'SharedRank1'
    assert methods_of_tensor('backbone.layers.0.attn.qkv.toyshared_b') == 'SharedRank1'
    assert 'toyshared_a' in no_decay_prefixes()
    assert zoo_methods()['toy-shared'] is SharedRank1 and 'toy' in zoo_folders()
    assert 'toy-shared' in suite_methods('vtab1k') and 'toy-shared' not in suite_methods('fgvc')
    spec = importlib.util.spec_from_file_location('peft_cost',
                                                  osp.join(ROOT, 'benchmarks', 'peft_cost.py'))
    peft_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peft_cost)
    assert peft_cost.registry_methods()['toy_shared'][1] == dict(type='SharedRank1')
    assert 'r (int >= 1 and <= 1, default 1): rank (one shared factor)' in SharedRank1.__doc__
    import test_method_matrix  # the matrix asks the new method for its rows
    with pytest.raises(AssertionError, match='SharedRank1: no merge case'):
        test_method_matrix.test_every_registered_method_is_in_the_matrix()
