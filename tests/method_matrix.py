"""The method × backbone test matrix: one row per registered method.

``tests/test_method_matrix.py`` fails for a registered method that has no row in a table it
needs (merge equivalence or merge refusal, PEFT-only round trip, parameter count), so a new method
cannot land untested. A case is ``fn(backbone, tmp_path) -> peft config`` (SPT needs an allocation
made for the backbone at hand).
"""
import torch

from mmssf.peft.spt import allocate, scored_parameters


def fixed(cfg):
    return lambda backbone, tmp_path: dict(cfg)


def spt_allocation(kind, budget=2000, rank=2, **options):
    """An SPT config whose allocation comes from heavy-tailed random scores of ``backbone``
    (``options``: of the method, e.g. the LoRA regularisation)."""
    def case(backbone, tmp_path):
        gen = torch.Generator().manual_seed(0)
        scores = {n: torch.rand(p.shape, generator=gen) ** 4
                  for n, p in scored_parameters(backbone).items()}
        alloc = allocate(scores, backbone, budget, kind=kind, rank=rank)
        path = alloc.save(str(tmp_path / f'alloc_{kind}'))
        return dict(type='SPTLoRA' if kind == 'lora' else 'SPTAdapter', allocation=path,
                    **options)
    return case


#: mergeable methods: tuned outputs == merged outputs == stock model with merged weights
MERGE_CASES = {
    'SSF': [fixed(dict(type='SSF')), fixed(dict(type='SSF', patch_merging=True))],
    'LoRA': [fixed(dict(type='LoRA', targets=['qkv', 'proj', 'fc1', 'fc2'], r=4, alpha=8))],
    'RLRR': [fixed(dict(type='RLRR')), fixed(dict(type='RLRR', init='official')),
             fixed(dict(type='RLRR', qkv_blocks=1))],
    'DoRA': [fixed(dict(type='DoRA', targets=['qkv', 'proj', 'fc1', 'fc2'], r=4, alpha=8)),
             fixed(dict(type='DoRA', detach_norm=False))],
    'SNELL': [fixed(dict(type='SNELL', r=4)),
              fixed(dict(type='SNELL', r=2, sparsity=0.5, sparsify='paper', qkv_blocks=1)),
              fixed(dict(type='SNELL', r=2, sparsity=0.0))],
    'BitFit': [fixed(dict(type='BitFit'))],
    'LinearProbe': [fixed(dict(type='Linear'))],
    'FullFineTune': [fixed(dict(type='Full'))],
    # (regularised as the official SPT-LoRA: dropout / drop-path act in training only)
    'SPTLoRA': [spt_allocation('lora'), spt_allocation('lora', dropout=0.1, drop_path=0.1)],
    # (FacT: shared factors per token width; its dropout acts in training only)
    'FacTTT': [fixed(dict(type='FacTTT', r=4)), fixed(dict(type='FacTTT', r=2, scale=0.5))],
    'FacTTK': [fixed(dict(type='FacTTK', r=4)), fixed(dict(type='FacTTK', r=3, scale=0.1))],
    'GLoRA': [fixed(dict(type='GLoRA')),
              fixed(dict(type='GLoRA', r=2, A='vector', B='constant', C='vector', D='constant',
                         E='none')),
              fixed(dict(type='GLoRA', A='none', B='lora', C='none', D='none', E='vector'))],
}

#: methods that change the computation: merge must be refused with a clear message
REFUSE_CASES = {
    'Adapter': [fixed(dict(type='Adapter', r=4))],
    'VPTShallow': [fixed(dict(type='VPTShallow', num_prompts=3))],
    'VPTDeep': [fixed(dict(type='VPTDeep', num_prompts=3))],
    'SPTAdapter': [spt_allocation('adapter')],
    'Mona': [fixed(dict(type='Mona', r=8))],
    'AdaptFormer': [fixed(dict(type='AdaptFormer', r=4)),
                    fixed(dict(type='AdaptFormer', r=4, position='sequential'))],
    'AdapterPlus': [fixed(dict(type='AdapterPlus', r=4))],
}

#: every method: PEFT-only save / load reproduces the outputs exactly
ROUND_TRIP_CASES = {
    **{k: v[:1] for k, v in MERGE_CASES.items()},
    **{k: v[:1] for k, v in REFUSE_CASES.items()},
}

#: every method: a few steps through ``mmssf.AmpOptimWrapper`` (bf16 and fp16 autocast) train it
#: and (mergeable ones) merge after (``tests/test_amp.py``). Listed by hand, not derived: a method
#: registered without a row here fails the matrix.
AMP_CASES = {
    'SSF': fixed(dict(type='SSF')),
    'LoRA': fixed(dict(type='LoRA', targets=['qkv', 'proj', 'fc1', 'fc2'], r=4, alpha=8)),
    'RLRR': fixed(dict(type='RLRR')),
    'DoRA': fixed(dict(type='DoRA', targets=['qkv', 'proj', 'fc1', 'fc2'], r=4, alpha=8)),
    'SNELL': fixed(dict(type='SNELL', r=4)),
    'BitFit': fixed(dict(type='BitFit')),
    'LinearProbe': fixed(dict(type='Linear')),
    'FullFineTune': fixed(dict(type='Full')),
    'SPTLoRA': spt_allocation('lora'),
    'SPTAdapter': spt_allocation('adapter'),
    'Adapter': fixed(dict(type='Adapter', r=4)),
    'VPTShallow': fixed(dict(type='VPTShallow', num_prompts=3)),
    'VPTDeep': fixed(dict(type='VPTDeep', num_prompts=3)),
    'Mona': fixed(dict(type='Mona', r=8)),
    'FacTTT': fixed(dict(type='FacTTT', r=4)),
    'FacTTK': fixed(dict(type='FacTTK', r=4)),
    # (D scales the bias: mmdet / mmseg Swin start with zero biases, where D gets no gradient)
    'GLoRA': fixed(dict(type='GLoRA', D='none')),
    'AdaptFormer': fixed(dict(type='AdaptFormer', r=4)),
    'AdapterPlus': fixed(dict(type='AdapterPlus', r=4)),
}
