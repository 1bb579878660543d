"""The method contract, read from the registry: every advertised option of every registered
method acts (changes the built model or what it computes) or is refused with an error naming it;
options reach only the unit classes that declare them; docstrings list the specs; the
delta-weight kinds share one base and one cost signature."""
import inspect

import pytest
import torch

from conftest import build_backbone, flatten_outputs, randomize_peft
from method_matrix import spt_allocation
from mmssf.peft import OptionError, apply_peft, build_peft
from mmssf.peft.base import PeftUnit
from mmssf.peft.delta_weight import DeltaWeightUnit
from mmssf.peft.registry_facts import method_classes

CLASSES = {cls.__name__: cls for cls in method_classes()}
SPT_KIND = {'SPTLoRA': 'lora', 'SPTAdapter': 'adapter'}
#: the method-signature options (not unit specs): backbone and value that differ from the default
SIGNATURE_VALUES = {'patch_merging': ('mmpretrain_swin', True),
                    'pool_prompts': ('mmpretrain_swin', False),
                    'shared_qkv_dropout': ('mmpretrain_vit', False),
                    'cls_token': ('mmpretrain_vit', False),
                    'supernet': ('mmpretrain_vit', True)}
TARGETS = {'Mona': ['layers.0'], 'VPTShallow': ['layers.0'], 'VPTDeep': ['layers.0']}


def alternative(option):
    """A valid value of ``option`` other than its default."""
    if option.choices:
        return next(c for c in option.choices if c != option.default)
    types = option.types()
    if bool in types:
        return not option.default
    if float in types:
        if option.max is not None:
            return (option.max + (option.default or 0.0)) / 2
        return 2 * option.default if option.default else 3.0  # (3: no rank here, alpha != r)
    if int in types:
        return option.min or 0 if option.default is None else option.default + 2
    raise AssertionError(f'no alternative value for {option}')


def base_config(name, model, tmp_path):
    if name in SPT_KIND:
        return spt_allocation(SPT_KIND[name])(model, tmp_path)
    return dict(type=name)


def option_value(name, option, tmp_path):
    """``(backbone, value)`` of the variant build for ``option`` of method ``name``."""
    cls = CLASSES[name]
    if option in cls.unit_option_specs():
        return 'mmpretrain_vit', alternative(cls.unit_option_specs()[option])
    if option == 'targets':
        return 'mmpretrain_vit', TARGETS.get(name, ['fc1'])
    if option == 'allocation':
        model, _ = build_backbone('mmpretrain_vit')
        return 'mmpretrain_vit', spt_allocation(SPT_KIND[name], budget=3000)(
            model, tmp_path / 'other')['allocation']
    if option == 'support':  # GLoRA: a support file other than the default (one Linear, A only)
        from mmssf.peft.glora import GLoRASupport, backbone_fingerprint
        model, _ = build_backbone('mmpretrain_vit')
        config = dict(A='vector', B='none', C='none', D='none', E='none')
        return 'mmpretrain_vit', GLoRASupport(
            rank=2, supports={'layers.0.ffn.layers.0.0': config},
            backbone=backbone_fingerprint(model, ['layers.0.ffn.layers.0.0'])).save(
                str(tmp_path / 'support'))
    assert option in SIGNATURE_VALUES, \
        f'{name}: no test value for its option {option!r}: add one to SIGNATURE_VALUES'
    return SIGNATURE_VALUES[option]


def fingerprint(model, size):
    """The built tensors, then (with every tuned tensor moved off its init) the outputs in eval
    and in training mode and the gradients."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    randomize_peft(model)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        evaluated = flatten_outputs(model(x))
    model.train()
    torch.manual_seed(1)
    trained = flatten_outputs(model(x))
    sum(t.float().square().mean() for t in trained).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.requires_grad and p.grad is not None}
    return state, evaluated, [t.detach() for t in trained], grads


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and torch.equal(a, b)


def build(name, backbone, tmp_path, **options):
    model, size = build_backbone(backbone)
    cfg = dict(base_config(name, model, tmp_path), **options)
    torch.manual_seed(0)
    apply_peft(model, cfg)
    return fingerprint(model, size)


OPTIONS = [(name, option) for name, cls in sorted(CLASSES.items())
           for option in cls.method_option_names()]


@pytest.mark.parametrize('name,option', OPTIONS, ids=[f'{n}-{o}' for n, o in OPTIONS])
def test_every_advertised_option_acts_or_is_refused(tmp_path, name, option):
    backbone, value = option_value(name, option, tmp_path)
    default = build(name, backbone, tmp_path)
    try:
        variant = build(name, backbone, tmp_path, **{option: value})
    except (ValueError, TypeError) as err:  # (OptionError is a ValueError)
        assert option in str(err), f'{name}: {option}={value!r} refused without naming it: {err}'
        return
    assert not _equal(default, variant), \
        f'{name}: option {option}={value!r} changed nothing (advertised, silently ignored)'


def test_every_method_declares_each_option_once_or_fans_it_out():
    for cls in CLASSES.values():
        cls.option_owners()  # raises naming the options reaching units that did not ask


def test_a_shared_option_name_without_fan_out_is_a_declaration_error():
    from mmssf.peft.rlrr import RLRR
    from mmssf.peft.ssf import SSFUnit
    from mmssf.peft.rlrr import RLRRUnit

    class TwoShifts(RLRR):
        """Declares RLRR's and SSF's ``shift`` without saying it fans out."""
        unit_classes = (RLRRUnit, SSFUnit)
        fan_out_options = ()

    with pytest.raises(TypeError, match=r"\['shift'\].*fan_out_options"):
        TwoShifts.option_owners()
    assert set(CLASSES['RLRR'].option_owners()['shift']) == {RLRRUnit, SSFUnit}


@pytest.mark.parametrize('option', ['indices', 'r', 'row_block', 'row_blocks'])
def test_options_the_allocation_sets_are_refused(tmp_path, option):
    model, _ = build_backbone('mmpretrain_vit')
    cfg = spt_allocation('lora')(model, tmp_path)
    assert option not in CLASSES['SPTLoRA'].method_option_names()  # not advertised
    with pytest.raises(ValueError, match=f'{option}.*allocation'):
        build_peft(dict(cfg, **{option: {'weight': torch.zeros(1, dtype=torch.long)}
                                if option == 'indices' else 1}))


def test_row_blocks_without_row_block_is_an_error():
    model, _ = build_backbone('mmpretrain_vit')
    with pytest.raises(OptionError, match='row_blocks=3 needs row_block'):
        apply_peft(model, dict(type='LoRA', row_blocks=3))


def test_patch_merging_with_explicit_targets_is_an_error():
    for name, role in (('SSF', 'merge_norm'), ('RLRR', 'merge_reduction')):
        model, _ = build_backbone('mmpretrain_swin')
        with pytest.raises(OptionError, match=f"patch_merging=True adds '{role}'"):
            apply_peft(model, dict(type=name, targets=['fc1'], patch_merging=True))


def test_docstrings_list_the_unit_options_from_their_specs():
    """(The method's own arguments, e.g. VPT's ``num_prompts``, are documented by hand.)"""
    for cls in CLASSES.values():
        own = set(inspect.signature(cls.__init__).parameters)
        for option, spec in cls.unit_option_specs().items():
            if option not in own:
                assert f'{option} ({spec.describe()}): {spec.doc}' in cls.__doc__, (cls, option)


# -- the delta-weight kinds ---------------------------------------------------------------------
def _unit_classes():
    return {u for cls in CLASSES.values() for u in cls.all_unit_classes()}


def test_delta_weight_kinds_are_thin_subclasses():
    kinds = {u.__name__: u for u in _unit_classes() if issubclass(u, DeltaWeightUnit)}
    assert {'LoRAUnit', 'DoRAUnit', 'SNELLUnit'} <= set(kinds)
    shared = ('attach', 'merge', 'forward_hook', 'reparameterize', 'num_params',
              'refuse_regularisation')
    for kind in kinds.values():
        overridden = [m for m in shared if m in vars(kind)]
        assert not overridden, f'{kind.__name__} re-implements {overridden}'


def test_num_params_has_one_signature():
    def params(fn):
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]
    reference = params(PeftUnit.num_params)
    assert reference == [('module', inspect.Parameter.empty), ('r', inspect.Parameter.empty),
                         ('row_blocks', 1)]
    for unit in _unit_classes():
        assert params(unit.num_params) == reference, unit


@pytest.mark.parametrize('backbone_name', ['mmpretrain_vit', 'mmseg_vit'])
def test_structured_cost_is_the_built_count_for_every_delta_weight_kind(backbone_name):
    """``num_params(module, r, row_blocks)`` for each kind equals what a unit of that kind on a
    whole qkv (and, where the kind has row blocks, on one q/k/v block) trains."""
    from mmssf.peft.spt.allocation import structured_cost
    for name in ('LoRA', 'DoRA', 'SNELL'):
        unit_cls = CLASSES[name].unit_cls
        model, _ = build_backbone(backbone_name)
        method = apply_peft(model, dict(type=name, targets=['fc1'], r=2))
        unit = method.units[0]
        built = sum(getattr(unit.module, n).numel() for n in unit.param_names)
        assert unit_cls.num_params(unit.module, 2) == built, name
        assert unit_cls.num_params(unit.module, 2, row_blocks=2) > 0
        if 'row_block' in unit_cls.option_spec:
            model, _ = build_backbone(backbone_name)
            method = apply_peft(model, dict(type=name, r=2, row_block=1, row_blocks=3))
            unit = method.units[0]
            built = sum(getattr(unit.module, n).numel() for n in unit.param_names)
            assert unit_cls.num_params(unit.module, 2, row_blocks=3) == built, name
    qkv = dict(build_backbone('mmpretrain_vit')[0].named_modules())['layers.0.attn.qkv']
    assert structured_cost(qkv, 'lora', 2, row_blocks=3) == 2 * (32 + 32)
