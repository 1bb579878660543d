"""Convert official Swin Transformer weights to the mmpretrain ``SwinTransformer`` key layout.

    python tools/model_converters/swin_official_to_mm.py SRC DST [--prefix P]

SRC is a checkpoint of microsoft/Swin-Transformer (``swin_base_patch4_window7_224_22k.pth``:
the weights under ``model``). mmdet's and mmseg's Swin convert such files themselves on load
(``convert_weights=True``); mmpretrain's does not, and its own converter is not in the pip
package. The key renaming and the patch-merging channel reorder are mmdet's ``swin_converter``
(the official ``PatchMerging`` concatenates the 2x2 neighbours as (0,0), (1,0), (0,1), (1,1);
mmcv's ``nn.Unfold``-based one as (0,0), (0,1), (1,0), (1,1), so ``downsample.reduction`` columns
and ``downsample.norm`` entries are permuted). On top of it:

* the source keys are checked against the official layout (:data:`OFFICIAL`); unknown keys and
  incomplete blocks are errors listing them; the classifier ``head`` is dropped;
* the final ``norm`` becomes ``norm{last stage}`` (mmpretrain names the norm of each output);
* ``attn_mask`` buffers are dropped (mmpretrain computes them per input size);
* ``relative_position_index`` is written as mmpretrain computes it and checked against the
  source's own, where the source has one (the bias tables are used as they are).

DST holds ``{'state_dict', 'meta'}`` with backbone-level keys (``--prefix backbone.`` for
whole-classifier keys); the backbone arguments the weights need are printed.
"""
import argparse
import math
import os.path as osp
import pickle
import re
import sys
from collections import OrderedDict

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official Swin checkpoint (.pth, weights under "model")')
    parser.add_argument('dst', help='output .pth')
    parser.add_argument('--prefix', default='', help="prepended to every key, e.g. 'backbone.'")
    return parser.parse_args(argv)


if __name__ == '__main__':  # --help and argument errors answer here, before the heavy imports
    parse_args()


import torch  # noqa: E402

from mmssf.fileio import CheckpointFileError, atomic_save, load_checkpoint_file  # noqa: E402
from mmssf.integrity import seal_checkpoint  # noqa: E402

_BLOCK = r'layers\.(\d+)\.blocks\.(\d+)\.'
#: every key of an official Swin (v1) checkpoint
OFFICIAL = [
    r'patch_embed\.proj\.(weight|bias)', r'patch_embed\.norm\.(weight|bias)', r'absolute_pos_embed',
    _BLOCK + r'norm[12]\.(weight|bias)', _BLOCK + r'attn\.qkv\.(weight|bias)',
    _BLOCK + r'attn\.proj\.(weight|bias)', _BLOCK + r'attn\.relative_position_bias_table',
    _BLOCK + r'attn\.relative_position_index', _BLOCK + r'attn_mask',
    _BLOCK + r'mlp\.fc[12]\.(weight|bias)', r'layers\.(\d+)\.downsample\.reduction\.weight',
    r'layers\.(\d+)\.downsample\.norm\.(weight|bias)', r'norm\.(weight|bias)', r'head\.(weight|bias)',
]
REQUIRED_PER_BLOCK = ['norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.proj.weight',
                      'attn.proj.bias', 'attn.relative_position_bias_table', 'norm2.weight',
                      'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight',
                      'mlp.fc2.bias']
#: every key the conversion may produce (mmpretrain SwinTransformer)
MMPRETRAIN = [
    r'patch_embed\.projection\.(weight|bias)', r'patch_embed\.norm\.(weight|bias)',
    r'absolute_pos_embed', r'stages\.\d+\.blocks\.\d+\.norm[12]\.(weight|bias)',
    r'stages\.\d+\.blocks\.\d+\.attn\.w_msa\.(qkv|proj)\.(weight|bias)',
    r'stages\.\d+\.blocks\.\d+\.attn\.w_msa\.relative_position_(bias_table|index)',
    r'stages\.\d+\.blocks\.\d+\.ffn\.layers\.(0\.0|1)\.(weight|bias)',
    r'stages\.\d+\.downsample\.reduction\.weight', r'stages\.\d+\.downsample\.norm\.(weight|bias)',
    r'norm\d+\.(weight|bias)',
]


class ConversionError(ValueError):
    pass


def _short(keys, n=12):
    keys = sorted(keys)
    return ', '.join(keys[:n]) + (f' ... ({len(keys) - n} more)' if len(keys) > n else '')


def check_official(state_dict) -> dict:
    """Validate the official layout; return ``{stage: num_blocks}``."""
    patterns = [re.compile(p) for p in OFFICIAL]
    unknown = [k for k in state_dict if not any(p.fullmatch(k) for p in patterns)]
    if unknown:
        raise ConversionError(f'keys of no official Swin (v1) layout: {_short(unknown)}')
    blocks = {}
    for key in state_dict:
        m = re.match(_BLOCK, key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    missing = [k for k in ('patch_embed.proj.weight', 'patch_embed.norm.weight', 'norm.weight')
               if k not in state_dict]
    if sorted(blocks) != list(range(len(blocks))) or not blocks:
        missing.append(f'layers 0..{max(blocks, default=0)} (found {sorted(blocks)})')
    depths = {}
    for stage, ids in sorted(blocks.items()):
        if sorted(ids) != list(range(len(ids))):
            missing.append(f'layers.{stage}.blocks 0..{max(ids)} (found {sorted(ids)})')
        depths[stage] = len(ids)
        missing += [f'layers.{stage}.blocks.{j}.{k}' for j in ids for k in REQUIRED_PER_BLOCK
                    if f'layers.{stage}.blocks.{j}.{k}' not in state_dict]
        if stage < len(blocks) - 1:
            missing += [f'layers.{stage}.downsample.{k}' for k in
                        ('reduction.weight', 'norm.weight', 'norm.bias')
                        if f'layers.{stage}.downsample.{k}' not in state_dict]
    if missing:
        raise ConversionError(f'incomplete official Swin state dict, missing: {_short(missing)}')
    return depths


def mm_relative_position_index(window: int) -> torch.Tensor:
    """``relative_position_index`` exactly as mmpretrain's ``WindowMSA`` builds it."""
    from mmpretrain.models.utils.attention import WindowMSA
    seq = WindowMSA.double_step_seq(2 * window - 1, window, 1, window)
    return (seq + seq.T).flip(1).contiguous()


def convert(state_dict) -> 'OrderedDict[str, torch.Tensor]':
    """Official Swin state dict -> mmpretrain ``SwinTransformer`` keys (backbone level)."""
    from mmdet.models.backbones.swin import swin_converter
    depths = check_official(state_dict)
    last = len(depths) - 1
    out = OrderedDict()
    for key, value in swin_converter(OrderedDict(state_dict)).items():  # drops head.*
        key = key[len('backbone.'):]
        if key.endswith('attn_mask'):
            continue
        if key.startswith('norm.'):
            key = f'norm{last}.' + key[len('norm.'):]
        out[key] = value
    for key in [k for k in out if k.endswith('relative_position_bias_table')]:
        rows = out[key].shape[0]
        window = (math.isqrt(rows) + 1) // 2
        if (2 * window - 1) ** 2 != rows:
            raise ConversionError(f'{key}: {rows} rows is no (2W-1)^2 table of a square window')
        index_key = key.replace('bias_table', 'index')
        index = mm_relative_position_index(window)
        if index_key in out and not torch.equal(out[index_key].to(index.dtype), index):
            raise ConversionError(f'{index_key} differs from mmpretrain\'s index for window '
                                  f'{window}: the bias table would be read in another order')
        out[index_key] = index
    patterns = [re.compile(p) for p in MMPRETRAIN]
    stray = [k for k in out if not any(p.fullmatch(k) for p in patterns)]
    if stray:  # would be a bug of this table / mmdet's converter, not of the input
        raise ConversionError(f'conversion produced keys mmpretrain does not have: {_short(stray)}')
    return out


def backbone_settings(converted, depths) -> dict:
    """The mmpretrain ``SwinTransformer`` arguments these weights need."""
    heads = [converted[f'stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table'].shape[1]
             for i in sorted(depths)]
    rows = converted['stages.0.blocks.0.attn.w_msa.relative_position_bias_table'].shape[0]
    proj = converted['patch_embed.projection.weight']
    return dict(arch=dict(embed_dims=proj.shape[0], depths=[depths[i] for i in sorted(depths)],
                          num_heads=heads),
                patch_size=proj.shape[-1], window_size=(math.isqrt(rows) + 1) // 2,
                out_indices=(len(depths) - 1, ),
                use_abs_pos_embed='absolute_pos_embed' in converted)


def load_source(path):
    ckpt = load_checkpoint_file(path)
    for key in ('model', 'state_dict'):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


def main(argv=None):
    args = parse_args(argv)
    try:
        source = load_source(args.src)
    except (CheckpointFileError, pickle.UnpicklingError, FileNotFoundError) as err:
        sys.exit(f'swin_official_to_mm: {err}')  # (the message names the file)
    try:
        converted = convert(source)
    except ConversionError as err:
        sys.exit(f'swin_official_to_mm: {args.src}: {err}')
    settings = backbone_settings(converted, check_official(source))
    state_dict = OrderedDict((args.prefix + k, v.contiguous()) for k, v in converted.items())
    atomic_save(seal_checkpoint({'state_dict': state_dict,
                                 'meta': dict(source=osp.basename(args.src),
                                              converter='swin_official_to_mm',
                                              target='mmpretrain')}), args.dst)
    print(f'swin_official_to_mm: {len(state_dict)} tensors -> {args.dst} (mmpretrain '
          f'SwinTransformer keys{", prefix " + repr(args.prefix) if args.prefix else ""})')
    print(f'backbone settings these weights need: {settings}')


if __name__ == '__main__':
    main()
