"""Convert timm / Google ViT weights to the mmpretrain or mmseg ``VisionTransformer`` key layout.

    python tools/model_converters/vit_timm_to_mm.py SRC DST --target mmpretrain|mmseg [--prefix P]

SRC is a timm ``VisionTransformer`` state dict (``.pth`` / ``.bin`` / ``.safetensors``, e.g. the
papers' ImageNet-21k ViT-B/16 and ViT-L/16) or an original Google ``.npz`` (``ViT-B_16.npz``):
for ``.npz`` the timm model of the file's size is built (sizes read from the arrays) and loaded by
timm's own ``.npz`` loader, then its state dict is converted. DST holds ``{'state_dict', 'meta'}``
with backbone-level keys (``--prefix backbone.`` for whole-model keys), for
``init_cfg=dict(type='Pretrained', checkpoint=DST)`` / ``PeftBackbone``.

The conversion is the table :data:`RULES`: every source key must match exactly one rule or one of
:data:`DROPPED` (the classifier), and every block must be complete; anything else is an error that
lists the keys. mmseg's ViT fuses q/k/v into ``nn.MultiheadAttention``
(``attn.attn.in_proj_weight``), whose packed layout is timm's ``qkv`` rows (q, k, v), so the
tensors are copied unchanged.

To reproduce timm's features exactly the mm backbone needs timm's settings (printed at the end):
LayerNorm ``eps=1e-6`` (mmpretrain's default; mmseg defaults to 1e-5) and, for mmseg,
``patch_bias=True`` (mmseg's default ``False`` would drop the patch embedding's bias) and
``final_norm=True``.
"""
import argparse
import math
import os.path as osp
import pickle
import re
import sys
from collections import OrderedDict

TARGETS = ('mmpretrain', 'mmseg')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='timm ViT state dict (.pth/.bin/.safetensors) or Google .npz')
    parser.add_argument('dst', help='output .pth')
    parser.add_argument('--target', choices=TARGETS, required=True)
    parser.add_argument('--prefix', default='', help="prepended to every key, e.g. 'backbone.'")
    return parser.parse_args(argv)


if __name__ == '__main__':  # --help and argument errors answer here, before the heavy imports
    parse_args()


import torch  # noqa: E402

from mmssf.fileio import CheckpointFileError, atomic_save, load_checkpoint_file  # noqa: E402
from mmssf.integrity import seal_checkpoint  # noqa: E402

# (timm key regex, mmpretrain key, mmseg key); None: the target has no such tensor
_BLOCK = r'blocks\.(\d+)\.'
RULES = [
    (r'cls_token', 'cls_token', 'cls_token'),
    (r'pos_embed', 'pos_embed', 'pos_embed'),
    (r'patch_embed\.proj\.(weight|bias)', r'patch_embed.projection.\1', r'patch_embed.projection.\1'),
    (_BLOCK + r'norm1\.(weight|bias)', r'layers.\1.ln1.\2', r'layers.\1.ln1.\2'),
    (_BLOCK + r'attn\.qkv\.weight', r'layers.\1.attn.qkv.weight', r'layers.\1.attn.attn.in_proj_weight'),
    (_BLOCK + r'attn\.qkv\.bias', r'layers.\1.attn.qkv.bias', r'layers.\1.attn.attn.in_proj_bias'),
    (_BLOCK + r'attn\.proj\.(weight|bias)', r'layers.\1.attn.proj.\2', r'layers.\1.attn.attn.out_proj.\2'),
    (_BLOCK + r'norm2\.(weight|bias)', r'layers.\1.ln2.\2', r'layers.\1.ln2.\2'),
    (_BLOCK + r'mlp\.fc1\.(weight|bias)', r'layers.\1.ffn.layers.0.0.\2', r'layers.\1.ffn.layers.0.0.\2'),
    (_BLOCK + r'mlp\.fc2\.(weight|bias)', r'layers.\1.ffn.layers.1.\2', r'layers.\1.ffn.layers.1.\2'),
    (_BLOCK + r'ls1\.gamma', r'layers.\1.attn.gamma1.weight', None),  # layer scale (DeiT-3 ...)
    (_BLOCK + r'ls2\.gamma', r'layers.\1.ffn.gamma2.weight', None),
    (r'norm\.(weight|bias)', r'ln1.\1', r'ln1.\1'),  # final norm (final_norm=True)
    (r'fc_norm\.(weight|bias)', r'ln2.\1', None),  # norm after average pooling (out_type='avg_featmap')
    (r'norm_pre\.(weight|bias)', r'pre_norm.\1', None),  # pre_norm=True (CLIP-style)
]
#: the classifier and the original 21k checkpoints' representation layer: not backbone weights
DROPPED = [r'head\..+', r'pre_logits\..+']
REQUIRED = ['cls_token', 'pos_embed', 'patch_embed.proj.weight']
REQUIRED_PER_BLOCK = ['norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.proj.weight',
                      'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight',
                      'mlp.fc1.bias', 'mlp.fc2.weight', 'mlp.fc2.bias']

class ConversionError(ValueError):
    pass


def _short(keys, n=12):
    keys = sorted(keys)
    return ', '.join(keys[:n]) + (f' ... ({len(keys) - n} more)' if len(keys) > n else '')


def convert(state_dict, target: str) -> 'OrderedDict[str, torch.Tensor]':
    """timm ViT state dict -> ``target`` (``'mmpretrain'`` / ``'mmseg'``) VisionTransformer keys."""
    if target not in TARGETS:
        raise ConversionError(f'unknown target {target!r}; one of {TARGETS}')
    column = 1 + TARGETS.index(target)
    rules = [(re.compile(rule[0]), rule[column]) for rule in RULES]
    dropped = [re.compile(p) for p in DROPPED]
    out, unknown, unsupported = OrderedDict(), [], []
    for key, value in state_dict.items():
        if any(p.fullmatch(key) for p in dropped):
            continue
        match = next(((m, template) for rx, template in rules for m in [rx.fullmatch(key)] if m),
                     None)
        if match is None:
            unknown.append(key)
        elif match[1] is None:
            unsupported.append(key)
        else:
            out[match[0].expand(match[1])] = value
    if unknown:
        raise ConversionError(f'keys of no known timm ViT layout: {_short(unknown)} (supported: '
                              f'the plain ViT of timm.models.vision_transformer: '
                              f'{", ".join(r[0] for r in RULES)})')
    if unsupported:
        raise ConversionError(f'the {target} VisionTransformer has no tensor for: '
                              f'{_short(unsupported)}')
    _check_complete(state_dict)
    return out


def _check_complete(state_dict) -> None:
    blocks = sorted({int(m.group(1)) for k in state_dict for m in [re.match(_BLOCK, k)] if m})
    missing = [k for k in REQUIRED if k not in state_dict]
    if blocks != list(range(len(blocks))):
        missing.append(f'blocks {sorted(set(range(max(blocks) + 1)) - set(blocks))}')
    if not blocks:
        missing.append('blocks.0.*')
    for i in blocks:
        missing += [f'blocks.{i}.{k}' for k in REQUIRED_PER_BLOCK
                    if f'blocks.{i}.{k}' not in state_dict]
    if missing:
        raise ConversionError(f'incomplete ViT state dict, missing: {_short(missing)}')


def backbone_settings(state_dict, target: str, num_heads=None) -> dict:
    """The backbone arguments these weights need (from converted, backbone-level keys)."""
    dims = state_dict['cls_token'].shape[-1]
    patch = state_dict['patch_embed.projection.weight'].shape[-1]
    layers = 1 + max(int(k.split('.')[1]) for k in state_dict if k.startswith('layers.'))
    ffn = state_dict['layers.0.ffn.layers.0.0.weight'].shape[0]
    grid = int(math.isqrt(state_dict['pos_embed'].shape[1] - 1))
    heads = num_heads if num_heads is not None else '<as the source model>'
    if target == 'mmpretrain':
        return dict(arch=dict(embed_dims=dims, num_layers=layers, num_heads=heads,
                              feedforward_channels=ffn), img_size=grid * patch, patch_size=patch)
    return dict(img_size=grid * patch, patch_size=patch, embed_dims=dims, num_layers=layers,
                num_heads=heads, mlp_ratio=ffn / dims,
                patch_bias='patch_embed.projection.bias' in state_dict,
                final_norm='ln1.weight' in state_dict, with_cls_token=True,
                norm_cfg=dict(type='LN', eps=1e-6))


# ----------------------------------------------------------------------------- reading sources
def _unwrap(obj):
    for key in ('state_dict', 'model', 'module'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _npz_arch(path):
    """Sizes of the ViT in a Google ``.npz`` (original and big_vision layouts)."""
    import numpy as np
    w = np.load(path)
    prefix = next((p for p in ('', 'opt/target/', 'params/', 'params/img/')
                   if f'{p}embedding/kernel' in w), None)
    if prefix is None:
        raise ConversionError(f'{path}: no embedding/kernel, not a ViT .npz')
    ph, pw, _, dims = w[f'{prefix}embedding/kernel'].shape
    if f'{prefix}cls' not in w:
        raise ConversionError(f'{path}: no class token (a pooled big_vision / SigLIP model); '
                              f'only class-token ViTs are supported')
    stacked = f'{prefix}Transformer/encoderblock/LayerNorm_0/scale' in w
    if stacked:
        depth = w[f'{prefix}Transformer/encoderblock/LayerNorm_0/scale'].shape[0]
        block, idx = f'{prefix}Transformer/encoderblock/', (0, )
    else:
        block_rx = re.compile(re.escape(prefix) + r'Transformer/encoderblock_(\d+)/')
        found = (block_rx.match(k) for k in w.files)
        depth = len({m.group(1) for m in found if m})
        block, idx = f'{prefix}Transformer/encoderblock_0/', ()
    mha = next(k for k in w.files if k.startswith(block + 'MultiHeadDotProductAttention_')
               and k.endswith('/query/kernel'))
    heads = w[mha].shape[len(idx) + 1]
    mlp_key = next(k for k in w.files if k.startswith(block + 'MlpBlock_') and
                   k.endswith('/Dense_0/kernel'))
    mlp = w[mlp_key].shape[-1]
    pos_key = (f'{prefix}pos_embedding' if f'{prefix}pos_embedding' in w
               else f'{prefix}Transformer/posembed_input/pos_embedding')
    tokens = w[pos_key].shape[-2]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1 or ph != pw:
        raise ConversionError(f'{path}: cannot read a square grid from {tokens} position tokens')
    return dict(img_size=grid * ph, patch_size=ph, embed_dim=dims, depth=depth, num_heads=heads,
                mlp_ratio=mlp / dims)


def load_source(path):
    """``(timm state dict, num_heads or None)`` from ``.npz`` / ``.safetensors`` / torch files."""
    if path.endswith('.npz'):
        from timm.models.vision_transformer import VisionTransformer, _load_weights
        arch = _npz_arch(path)
        model = VisionTransformer(num_classes=0, **arch)
        with torch.no_grad():
            _load_weights(model, path)
        return model.state_dict(), arch['num_heads']
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path), None
    return _unwrap(load_checkpoint_file(path)), None


def main(argv=None):
    args = parse_args(argv)
    try:
        source, heads = load_source(args.src)
    except (CheckpointFileError, pickle.UnpicklingError, FileNotFoundError) as err:
        sys.exit(f'vit_timm_to_mm: {err}')  # (the message names the file)
    try:
        converted = convert(source, args.target)
    except ConversionError as err:
        sys.exit(f'vit_timm_to_mm: {args.src}: {err}')
    settings = backbone_settings(converted, args.target, heads)
    state_dict = OrderedDict((args.prefix + k, v.contiguous()) for k, v in converted.items())
    atomic_save(seal_checkpoint({'state_dict': state_dict,
                                 'meta': dict(source=osp.basename(args.src),
                                              converter='vit_timm_to_mm', target=args.target)}),
                args.dst)
    print(f'vit_timm_to_mm: {len(state_dict)} tensors -> {args.dst} ({args.target} '
          f'VisionTransformer keys{", prefix " + repr(args.prefix) if args.prefix else ""})')
    print(f'backbone settings these weights need: {settings}')
    if args.target == 'mmseg':
        print('note: mmseg VisionTransformer defaults to patch_bias=False and LayerNorm eps=1e-5; '
              'without the settings above the patch bias is dropped and the features differ')


if __name__ == '__main__':
    main()
