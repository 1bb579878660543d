"""Target tables: where each tuning position lives in each supported backbone implementation.

A table maps *roles* (``qkv``, ``proj``, ``fc1`` ...) to a regular expression over module names
relative to the backbone. Methods speak only in roles (or user patterns); all knowledge of a
particular implementation lives here, once.

Roles:
    patch_embed       the patch-embedding projection (Conv2d)
    patch_embed_norm  the norm after it (Swin)
    norm1 / norm2     pre-attention / pre-MLP LayerNorms of each block
    qkv               the fused q/k/v projection (``nn.MultiheadAttention`` in-projection in mmseg ViT),
                      or the three separate ones where the table says ``fused_qkv=False`` (EVA-02)
    proj              the attention output projection
    fc1 / fc2         the two MLP Linears (fc1: both input projections of a SwiGLU MLP, EVA-02)
    final_norm        the norm after the last block (ViT)
    out_norm          the norms on the output stages (Swin ``norm{i}``)
    merge_norm        the norm in Swin patch merging
    merge_reduction   the bias-free Linear in Swin patch merging
    layer_scale       timm's per-channel LayerScale after attention / MLP (DINOv2: ``ls1`` / ``ls2``)
    block             a ViT encoder layer / a Swin block (VPT inserts prompts around it)
    window_attn       a Swin window attention (VPT shares prompts across its windows)

A role whose module is an ``nn.Identity`` in a given model (timm: ``fc_norm`` of a cls-token
model, ``patch_embed.norm``, LayerScale off) is absent there.

Swin token flow (VPT carries prompt tokens through these; see "Swin token-flow facts" below):
    stage             a Swin stage (blocks, then an optional patch merging)
    shift_window_attn a block's ShiftWindowMSA: called as ``(tokens, hw_shape)``; pads, shifts and
                      partitions the map into windows for ``window_attn``
    shift_window_drop the DropPath that ends ShiftWindowMSA (``(tokens,)``, the un-windowed map)
    patch_merging     a stage's PatchMerging: called as ``(tokens, hw_shape)``; pads, unfolds (an
                      ``nn.Unfold``: channel-major, ``c * kernel_area + position``), then
                      ``merge_norm`` (when present) and ``merge_reduction`` see the token sequence
"""
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

_SWIN_BLOCK = r'stages\.\d+\.blocks\.\d+'
_VIT_LAYER = r'layers\.\d+'
_TIMM_BLOCK = r'blocks\.\d+'
_TIMM_SWIN_BLOCK = r'layers\.\d+\.blocks\.\d+'


# Token maps: the token stream of a block between its sub-layers and its spatial layout, for
# methods that act on the stream itself with spatial filters (Mona); each table holds its own.
@dataclass(frozen=True)
class TokenMap:
    """Where the token stream of a block can be reached after its attention and after its MLP, and
    the spatial grid of its tokens.

    Args:
        blocks: regex (full match) of the block modules.
        grid: ``'block_arg'``: each block is called as ``block(x, hw_shape)`` (Swin stages);
            ``'patch_embed'``: one grid for every block, the ``(H, W)`` that the module
            ``grid_source`` returns as its second output (ViT); ``'conv_map'``: the spatial size
            of the map the convolution ``grid_source`` returns (timm ViT).
        grid_source: the module of ``'patch_embed'`` / ``'conv_map'`` grids.
        extra_tokens: the number of leading tokens that are not on the grid (cls token), read from
            the backbone.
        attn_residual: where ``x + attn(norm1(x))`` is formed: ``'block'``, in the block's own
            forward, which passes it to ``norm`` (first argument) and to ``ffn`` (its ``identity``
            keyword); ``'attn'``: the attention module ``attn`` returns it (``identity=x``);
            ``'branch'``: the block adds both residuals itself, ``x = x + b1(...)`` and ``x = x +
            b2(ffn(norm(x)))``, with the modules named ``branches`` ending the two branches
            (timm).
        attn / norm / ffn: names of the block's attention module, of the norm before the MLP and of
            the MLP module (which returns ``identity + mlp(...)``).
        branches: ``'branch'`` blocks: the modules ending the attention and the MLP branches.
        mlp_branch: the module (relative to the block) whose output is the MLP branch's term of
            the stream, after its drop-path and before the residual sum (mmcv's ``FFN``:
            ``identity + dropout_layer(layers(x))``; timm: ``drop_path2``) — where AdaptFormer /
            Adapter+ add their adapters beside or after the MLP.
    """
    blocks: str
    grid: str
    extra_tokens: Callable[[nn.Module], int]
    attn_residual: str
    grid_source: str = ''
    attn: str = 'attn'
    norm: str = 'norm2'
    ffn: str = 'ffn'
    branches: Tuple[str, str] = ()
    mlp_branch: str = 'ffn.dropout_layer'


_SWIN_TOKEN_MAP = TokenMap(blocks=_SWIN_BLOCK, grid='block_arg', extra_tokens=lambda backbone: 0,
                           attn_residual='block')


@dataclass(frozen=True)
class TargetTable:
    """Roles of one backbone implementation.

    Args:
        name: implementation name shown in messages.
        classes: dotted class paths this table describes (subclasses match too).
        roles: role -> regex (full match) over module names.
        kind: ``'vit'`` or ``'swin'``; decides how VPT inserts prompts.
        shift_sinks: for a bias-free producer, the parameter that receives its output unchanged as
            an additive term (``module name -> (parameter name, first token index)``), so an SSF shift
            folds there at merge time.
        cls_token: name of the class-token parameter (ViT), or None where there is none (Swin).
            The backbone may still lack it (mmpretrain ViT with ``with_cls_token=False``).
        token_map: see :class:`TokenMap` (mmcv-style blocks: ``x = x + attn(norm1(x)); x =
            ffn(norm2(x), identity=x)``, or mmseg ViT's ``x = attn(ln1(x), identity=x); x =
            ffn(ln2(x), identity=x)``).
    """
    name: str
    classes: Tuple[str, ...]
    roles: Dict[str, str]
    kind: str
    shift_sinks: Dict[str, Tuple[str, int]] = field(default_factory=dict)
    cls_token: Optional[str] = None
    #: the last stage's output map feeds a classifier's global average pool (mmpretrain); dense
    #: backbones (mmdet, mmseg) feed their maps to dense heads
    pooled_output: bool = False
    #: regex (full match) of modules inside the tuned model that train with every method: the
    #: classifier of an implementation whose model includes it (timm), as a head outside an
    #: OpenMMLab backbone does
    always_trained: str = ''
    #: the ``qkv`` role is one Linear whose output rows stack q, k and v (False: three Linears)
    fused_qkv: bool = True
    #: why prompt tokens (VPT) cannot join this implementation's token stream ('' : they can)
    prompt_blocker: str = ''
    #: the token stream of its blocks (methods on the stream between sub-layers: Mona)
    token_map: Optional[TokenMap] = None

    def qkv_blocks(self, module_name: str) -> int:
        """3 for a module whose output rows stack q, k and v; 1 otherwise."""
        return 3 if self.fused_qkv and self.role_of(module_name) == 'qkv' else 1

    def role_of(self, module_name: str):
        for role, pattern in self.roles.items():
            if re.fullmatch(pattern, module_name):
                return role
        return None


SWIN_ROLES = {
    'patch_embed': r'patch_embed\.projection',
    'patch_embed_norm': r'patch_embed\.norm',
    'norm1': _SWIN_BLOCK + r'\.norm1',
    'qkv': _SWIN_BLOCK + r'\.attn\.w_msa\.qkv',
    'proj': _SWIN_BLOCK + r'\.attn\.w_msa\.proj',
    'norm2': _SWIN_BLOCK + r'\.norm2',
    'fc1': _SWIN_BLOCK + r'\.ffn\.layers\.0\.0',
    'fc2': _SWIN_BLOCK + r'\.ffn\.layers\.1',
    'merge_norm': r'stages\.\d+\.downsample\.norm',
    'merge_reduction': r'stages\.\d+\.downsample\.reduction',
    'out_norm': r'norm\d+',
    'window_attn': _SWIN_BLOCK + r'\.attn\.w_msa',
    # token flow (VPT)
    'block': _SWIN_BLOCK,
    'stage': r'stages\.\d+',
    'shift_window_attn': _SWIN_BLOCK + r'\.attn',
    'shift_window_drop': _SWIN_BLOCK + r'\.attn\.drop',
    'patch_merging': r'stages\.\d+\.downsample',
}

# timm's ViT blocks (VisionTransformer, Eva): ``x = x + drop_path1(ls1(attn(norm1(x))))``, then
# the same with the MLP; an EVA-02 table changes q / k / v and the SwiGLU input projections
_TIMM_VIT_ROLES = {
    'patch_embed': r'patch_embed\.proj',
    'patch_embed_norm': r'patch_embed\.norm',
    'norm1': _TIMM_BLOCK + r'\.norm1',
    'qkv': _TIMM_BLOCK + r'\.attn\.qkv',
    'proj': _TIMM_BLOCK + r'\.attn\.proj',
    'norm2': _TIMM_BLOCK + r'\.norm2',
    'fc1': _TIMM_BLOCK + r'\.mlp\.fc1',
    'fc2': _TIMM_BLOCK + r'\.mlp\.fc2',
    'layer_scale': _TIMM_BLOCK + r'\.ls[12]',
    'final_norm': r'norm|fc_norm',  # (one is an Identity, by the model's pooling)
    'block': _TIMM_BLOCK,
}
_TIMM_VIT_TOKEN_MAP = TokenMap(
    blocks=_TIMM_BLOCK, grid='conv_map', grid_source='patch_embed.proj',
    extra_tokens=lambda backbone: int(backbone.num_prefix_tokens), attn_residual='branch',
    norm='norm2', ffn='mlp', branches=('drop_path1', 'drop_path2'), mlp_branch='drop_path2')

TABLES: List[TargetTable] = [
    TargetTable(
        name='mmpretrain VisionTransformer',
        classes=('mmpretrain.models.backbones.vision_transformer.VisionTransformer', ),
        kind='vit',
        roles={
            'patch_embed': r'patch_embed\.projection',
            'norm1': _VIT_LAYER + r'\.ln1',
            'qkv': _VIT_LAYER + r'\.attn\.qkv',
            'proj': _VIT_LAYER + r'\.attn\.proj',
            'norm2': _VIT_LAYER + r'\.ln2',
            'fc1': _VIT_LAYER + r'\.ffn\.layers\.0\.0',
            'fc2': _VIT_LAYER + r'\.ffn\.layers\.1',
            'final_norm': r'ln1',
            'block': _VIT_LAYER,
        },
        cls_token='cls_token',
        token_map=TokenMap(
            blocks=_VIT_LAYER, grid='patch_embed', grid_source='patch_embed',
            extra_tokens=lambda backbone: int(backbone.num_extra_tokens), attn_residual='block',
            norm='ln2')),
    TargetTable(
        name='mmseg VisionTransformer',
        classes=('mmseg.models.backbones.vit.VisionTransformer', ),
        kind='vit',
        roles={
            'patch_embed': r'patch_embed\.projection',
            'patch_embed_norm': r'patch_embed\.norm',
            'norm1': _VIT_LAYER + r'\.ln1',
            'qkv': _VIT_LAYER + r'\.attn\.attn',  # nn.MultiheadAttention: its fused in-projection
            'proj': _VIT_LAYER + r'\.attn\.attn\.out_proj',
            'norm2': _VIT_LAYER + r'\.ln2',
            'fc1': _VIT_LAYER + r'\.ffn\.layers\.0\.0',
            'fc2': _VIT_LAYER + r'\.ffn\.layers\.1',
            'final_norm': r'ln1',
            'block': _VIT_LAYER,
        },
        # patch_bias=False by default; the position embedding is added to the patch tokens
        # (token 1 onwards, after the cls token) right after the projection.
        shift_sinks={'patch_embed.projection': ('pos_embed', 1)},
        cls_token='cls_token',
        token_map=TokenMap(
            blocks=_VIT_LAYER, grid='patch_embed', grid_source='patch_embed',
            extra_tokens=lambda backbone: int(bool(backbone.with_cls_token)),
            attn_residual='attn', norm='ln2')),
    TargetTable(
        name='timm VisionTransformer',
        classes=('timm.models.vision_transformer.VisionTransformer', ),
        kind='vit',
        roles=_TIMM_VIT_ROLES,
        cls_token='cls_token', always_trained=r'head',
        token_map=_TIMM_VIT_TOKEN_MAP),
    TargetTable(
        name='timm Eva',
        classes=('timm.models.eva.Eva', ),
        kind='vit',
        roles={**{k: v for k, v in _TIMM_VIT_ROLES.items() if k != 'layer_scale'},
               'qkv': _TIMM_BLOCK + r'\.attn\.[qkv]_proj',  # (EVA-02: separate; k has no bias)
               'fc1': _TIMM_BLOCK + r'\.mlp\.fc1(?:_g|_x)?'},  # SwiGLU: gate and value inputs
        cls_token='cls_token', always_trained=r'head', fused_qkv=False,
        token_map=_TIMM_VIT_TOKEN_MAP,
        prompt_blocker='its attention applies a rotary position embedding to every token after '
                       'the prefix tokens by grid position, and prompt tokens have none'),
    TargetTable(
        name='timm SwinTransformer',
        classes=('timm.models.swin_transformer.SwinTransformer', ),
        kind='swin',
        roles={  # (channels-last maps: (B, H, W, C) between the blocks)
            'patch_embed': r'patch_embed\.proj',
            'patch_embed_norm': r'patch_embed\.norm',
            'norm1': _TIMM_SWIN_BLOCK + r'\.norm1',
            'qkv': _TIMM_SWIN_BLOCK + r'\.attn\.qkv',
            'proj': _TIMM_SWIN_BLOCK + r'\.attn\.proj',
            'norm2': _TIMM_SWIN_BLOCK + r'\.norm2',
            'fc1': _TIMM_SWIN_BLOCK + r'\.mlp\.fc1',
            'fc2': _TIMM_SWIN_BLOCK + r'\.mlp\.fc2',
            'merge_norm': r'layers\.\d+\.downsample\.norm',  # (timm: at a stage's start)
            'merge_reduction': r'layers\.\d+\.downsample\.reduction',
            'out_norm': r'norm',
            'block': _TIMM_SWIN_BLOCK,
        },
        pooled_output=True, always_trained=r'head\.fc',
        prompt_blocker="mmssf's Swin prompt flow follows OpenMMLab's ShiftWindowMSA and "
                       "PatchMerging modules; timm's window attention is not covered yet"),
    TargetTable(
        name='mmpretrain SwinTransformer',
        classes=('mmpretrain.models.backbones.swin_transformer.SwinTransformer', ),
        kind='swin', roles=SWIN_ROLES, pooled_output=True,
        token_map=_SWIN_TOKEN_MAP),
    TargetTable(
        name='mmdet SwinTransformer',
        classes=('mmdet.models.backbones.swin.SwinTransformer', ),
        kind='swin', roles=SWIN_ROLES, token_map=_SWIN_TOKEN_MAP),
    TargetTable(
        name='mmseg SwinTransformer',
        classes=('mmseg.models.backbones.swin.SwinTransformer', ),
        kind='swin', roles=SWIN_ROLES, token_map=_SWIN_TOKEN_MAP),
]


# -- Swin token-flow facts (VPT) -----------------------------------------------------------------
# The three Swin implementations share the module layout above. Their stage outputs reach
# ``norm{i}`` (one per output stage ``i``) and are then reshaped to ``B x C x H x W``: mmpretrain
# before the stage's patch merging (or after it with ``out_after_downsample``), mmdet / mmseg
# before it (the stage returns both). Window padding happens inside ShiftWindowMSA (after norm1),
# patch-merging padding inside PatchMerging (before the unfold).


def swin_stage_of(module_name: str) -> int:
    """Stage index of a Swin module name (``stages.2.blocks.1...`` -> 2, ``norm3`` -> 3)."""
    match = re.match(r'(?:stages\.|norm)(\d+)', module_name)
    if match is None:
        raise ValueError(f'{module_name!r} is no Swin stage / block / output-norm name')
    return int(match.group(1))


def window_attention_width(msa: nn.Module) -> int:
    """Token width of an mmcv ``WindowMSA`` (role ``window_attn``)."""
    return msa.qkv.in_features


def window_attention_with_leading_tokens(msa: nn.Module, x: torch.Tensor, num: int,
                                         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mmcv ``WindowMSA``'s computation on windows ``x`` (``windows x (num + area) x C``) whose
    first ``num`` tokens are extra (VPT's prompts): zero relative-position bias on their rows and
    columns, and never masked; the window tokens see the stock bias and (shifted-window) mask."""
    windows, total, channels = x.shape
    area = total - num
    heads = msa.num_heads
    qkv = msa.qkv(x).reshape(windows, total, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
    attn = (qkv[0] * msa.scale) @ qkv[1].transpose(-2, -1)
    bias = msa.relative_position_bias_table[msa.relative_position_index.view(-1)]
    bias = bias.view(area, area, -1).permute(2, 0, 1)
    attn = attn + F.pad(bias, (num, 0, num, 0)).unsqueeze(0)  # zero bias on the extra slots
    if mask is not None:
        masks = mask.shape[0]
        attn = attn.view(windows // masks, masks, heads, total, total) + \
            F.pad(mask, (num, 0, num, 0)).unsqueeze(1).unsqueeze(0)  # extra tokens never masked
        attn = attn.view(windows, heads, total, total)
    attn = msa.attn_drop(msa.softmax(attn))
    out = (attn @ qkv[2]).transpose(1, 2).reshape(windows, total, channels)
    return msa.proj_drop(msa.proj(out))


def patch_embedding(backbone: nn.Module, table: TargetTable) -> nn.Module:
    """The patch-embedding projection (role ``patch_embed``, a Conv2d) of ``backbone``."""
    return dict(backbone.named_modules())[resolve_targets(backbone, table, 'patch_embed')[0]]


def module_in(backbone: nn.Module, table: TargetTable, role: str, prefix: str):
    """The ``(name, module)`` of ``role`` inside the module named ``prefix``, or ``None``."""
    for name, module in backbone.named_modules():
        if name.startswith(prefix + '.') and re.fullmatch(table.roles[role], name):
            return name, module
    return None


#: wrapper backbones -> the attribute holding the model they wrap (mmssf tunes that model; its
#: state-dict keys keep the wrapper's prefix, e.g. ``backbone.timm_model.blocks.0...``)
WRAPPERS: Dict[str, str] = {
    'mmpretrain.models.backbones.timm_backbone.TIMMBackbone': 'timm_model',
    'mmseg.models.backbones.timm_backbone.TIMMBackbone': 'timm_model',
    # timm's ``features_only=True`` on a ViT: the model's forward_intermediates behind a getter
    # (keys ``timm_model.model.blocks...``)
    'timm.models._features.FeatureGetterNet': 'model',
}


def unwrap(backbone: nn.Module) -> nn.Module:
    """The module mmssf tunes for ``backbone``: the model its wrappers hold, else ``backbone``."""
    while True:
        attr = next((WRAPPERS[path] for path in (f'{c.__module__}.{c.__qualname__}'
                                                 for c in type(backbone).__mro__)
                     if path in WRAPPERS), None)
        if attr is None:
            return backbone
        backbone = getattr(backbone, attr)


def supported_backbones() -> List[str]:
    return [t.name for t in TABLES]


def find_table(backbone: nn.Module) -> TargetTable:
    """The table of ``backbone``'s implementation (its class or nearest known base class)."""
    for cls in type(backbone).__mro__:
        path = f'{cls.__module__}.{cls.__qualname__}'
        for table in TABLES:
            if path in table.classes:
                return table
    raise TypeError(
        f'mmssf has no target table for backbone class {type(backbone).__module__}.'
        f'{type(backbone).__qualname__}; supported implementations: {", ".join(supported_backbones())}')


def resolve_targets(backbone: nn.Module, table: TargetTable, pattern: str,
                    required: bool = True) -> List[str]:
    """Module names matched by ``pattern``: a role of ``table``, a regex (full match) or a suffix.

    Raises:
        ValueError: ``required`` and nothing matches; the message lists the names that exist.
    """
    names = [n for n, m in backbone.named_modules()
             if n and not (pattern in table.roles and isinstance(m, nn.Identity))]
    regex = table.roles.get(pattern, pattern)
    try:
        matched = [n for n in names if re.fullmatch(regex, n)]
    except re.error:
        matched = []
    if not matched:
        matched = [n for n in names if n == pattern or n.endswith('.' + pattern)]
    if not matched and required:
        shown = names if len(names) <= 60 else names[:60] + [f'... ({len(names) - 60} more)']
        raise ValueError(
            f'target {pattern!r} matches no module of {table.name}. Roles: '
            f'{", ".join(table.roles)}. Module names: {", ".join(shown)}')
    return matched


def cls_token_name(backbone: nn.Module, table: TargetTable = None):
    """Name of ``backbone``'s class-token parameter, or None (Swin; a ViT built without one)."""
    table = table or find_table(backbone)
    if table.cls_token is None:
        return None
    return table.cls_token if table.cls_token in dict(backbone.named_parameters()) else None


#: table name -> token map (derived from the tables; kept for readers of the old name)
TOKEN_MAPS: Dict[str, TokenMap] = {t.name: t.token_map for t in TABLES if t.token_map}


def token_map(table: TargetTable) -> TokenMap:
    """The token map of ``table``'s implementation."""
    if table.token_map is None:
        raise TypeError(f'mmssf has no token map for {table.name} (needed by methods that filter '
                        f'the token grid, e.g. Mona); known: {", ".join(TOKEN_MAPS)}')
    return table.token_map
