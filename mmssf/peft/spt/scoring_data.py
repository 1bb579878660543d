"""What SPT's sensitivity pass is fed: the task's *training* images through its *test* pipeline,
no batch augmentation, plain cross entropy for classifiers.

The authors' sensitivity scripts (He et al., "Sensitivity-Aware Visual Parameter-Efficient
Fine-Tuning", ICCV 2023; code ziplab/SPT) score with ``--no_aug --mixup=0 --cutmix=0
--smoothing=0``: gradients of the clean task loss on clean images. A config's
training recipe (RandomResizedCrop, RandAugment, RandomErasing, Mixup / CutMix, label smoothing)
would score noise. :func:`scoring_config` rewrites a copy of the config accordingly and says what
it changed; the sensitivity tool records that in the allocation file.
"""
import copy
import json
from typing import List, Tuple

from mmengine.config import Config, ConfigDict

#: classification losses replaced by plain cross entropy (label smoothing, soft targets)
_CE_FAMILY = ('LabelSmoothLoss', 'CrossEntropyLoss', 'SoftTargetCrossEntropy')


def _plain(obj):
    """Config values as JSON-safe plain data (for the allocation file)."""
    if isinstance(obj, ConfigDict):
        obj = obj.to_dict()
    return json.loads(json.dumps(obj, default=str))


def _type_name(transform) -> str:
    t = transform.get('type') if isinstance(transform, dict) else transform
    return t if isinstance(t, str) else getattr(t, '__name__', str(t))


def _pipeline_types(pipeline) -> List[str]:
    return [_type_name(t) for t in pipeline or []]


def leaf_datasets(dataset_cfg) -> List[dict]:
    """The dataset configs that hold a pipeline, inside wrappers (``dataset=`` / ``datasets=``)."""
    if 'pipeline' in dataset_cfg:
        return [dataset_cfg]
    if 'dataset' in dataset_cfg:
        return leaf_datasets(dataset_cfg['dataset'])
    if 'datasets' in dataset_cfg:
        return [leaf for d in dataset_cfg['datasets'] for leaf in leaf_datasets(d)]
    return [dataset_cfg]


def eval_pipeline(cfg: Config):
    """The pipeline of the config's test (else val) dataloader."""
    for loader in ('test_dataloader', 'val_dataloader'):
        loader_cfg = cfg.get(loader)
        if loader_cfg and loader_cfg.get('dataset'):
            leaves = [d for d in leaf_datasets(loader_cfg['dataset']) if d.get('pipeline')]
            if leaves:
                return copy.deepcopy(leaves[0]['pipeline']), loader
    raise ValueError('SPT scores on the training images through the test pipeline, but the '
                     'config has no test_dataloader / val_dataloader with a dataset pipeline')


def _check_annotations(train_types: List[str], test_types: List[str], source: str) -> None:
    missing = [t for t in dict.fromkeys(train_types) if 'Annotation' in t and t not in test_types]
    if missing:
        raise ValueError(f'the training loss needs {", ".join(missing)}, which the {source} '
                         f'pipeline lacks ({" -> ".join(test_types)}): SPT scores the training '
                         f'images through that pipeline; add the annotation loading to it')


def _drop_batch_augments(model_cfg, top_cfg) -> List[str]:
    """Remove the batch augmentations (Mixup / CutMix ...) of the data preprocessor and of an
    mmpretrain classifier's ``train_cfg``; keep pure padding (``BatchFixedSizePad``). Returns the
    removed types."""
    removed = []
    if isinstance(model_cfg.get('train_cfg'), dict) and 'augments' in model_cfg['train_cfg']:
        train_cfg = dict(model_cfg['train_cfg'])
        augments = train_cfg.pop('augments')
        train_cfg.pop('probs', None)
        removed += _pipeline_types(augments if isinstance(augments, (list, tuple)) else [augments])
        model_cfg['train_cfg'] = train_cfg or None
    for owner in (model_cfg, top_cfg):
        pre = owner.get('data_preprocessor')
        if not isinstance(pre, dict) or not pre.get('batch_augments'):
            continue
        augments = pre['batch_augments']
        if isinstance(augments, dict):  # mmpretrain: dict(augments=[...], probs=...)
            removed += _pipeline_types(augments.get('augments', []))
            pre['batch_augments'] = None
        else:  # mmdet / mmseg: a list of batch transforms
            keep = [a for a in augments if _type_name(a).endswith('Pad')]
            removed += [_type_name(a) for a in augments if not _type_name(a).endswith('Pad')]
            pre['batch_augments'] = keep or None
    return removed


def _plain_cross_entropy(model_cfg) -> dict:
    """Replace a single-label classifier's loss by plain cross entropy; describe the loss used."""
    head = model_cfg.get('head')
    if not isinstance(head, dict) or not _type_name(head).endswith('ClsHead') \
            or 'MultiLabel' in _type_name(head):
        losses = sorted({_type_name(v) for k, v in _walk(model_cfg) if k.startswith('loss')
                         and isinstance(v, dict) and 'type' in v})
        return dict(used='the task losses as configured', types=losses)
    configured = head.get('loss', dict(type='CrossEntropyLoss'))
    if _type_name(configured) in _CE_FAMILY and not configured.get('use_sigmoid', False):
        head['loss'] = dict(type='CrossEntropyLoss', loss_weight=1.0)
        return dict(used='CrossEntropyLoss', config=_plain(configured))
    return dict(used=_plain(configured), config=_plain(configured),
                note='not a cross-entropy-family loss: kept as configured')


def _walk(node):
    """``(key, value)`` of every dict entry inside ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _walk(v)


def is_classifier(cfg: Config) -> bool:
    head = cfg.model.get('head')
    return isinstance(head, dict) and _type_name(head).endswith('ClsHead')


def scoring_config(cfg: Config, batch_size=None) -> Tuple[Config, dict]:
    """A copy of ``cfg`` set up for scoring, and a plain-type record of what it changed.

    * ``train_dataloader``: the same training dataset and sampler, its pipeline replaced by the
      test (else val) dataloader's; batch size ``batch_size``, else the training batch size for a
      classifier and the test batch size otherwise (dense test pipelines keep each image's aspect
      ratio, so a batch of several rarely stacks);
    * no batch augmentation: the data preprocessor's ``batch_augments`` and an mmpretrain
      classifier's ``train_cfg.augments`` removed (padding kept);
    * a single-label classifier's loss (label smoothing, soft-target CE) replaced by plain
      ``CrossEntropyLoss``; dense tasks keep their losses (recorded);
    * the top-level ``data_preprocessor`` merged into the model as the Runner does.
    """
    cfg = copy.deepcopy(cfg)
    if cfg.get('data_preprocessor') is not None and isinstance(cfg.model, dict):
        cfg.model.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    pipeline, source = eval_pipeline(cfg)
    loader = cfg.train_dataloader
    leaves = leaf_datasets(loader.dataset)
    train_types = [t for leaf in leaves for t in _pipeline_types(leaf.get('pipeline'))]
    _check_annotations(train_types, _pipeline_types(pipeline), source)
    for leaf in leaves:
        leaf['pipeline'] = copy.deepcopy(pipeline)
    if batch_size is None and not is_classifier(cfg):
        batch_size = cfg.get(source).get('batch_size', loader.get('batch_size'))
    if batch_size is not None:
        loader.batch_size = batch_size
    removed = _drop_batch_augments(cfg.model, cfg)
    loss = _plain_cross_entropy(cfg.model)
    record = dict(
        data='training images through the test pipeline',
        pipeline=_plain(pipeline), pipeline_source=f'{source}.dataset.pipeline',
        train_pipeline_replaced=train_types, batch_augments_removed=removed,
        batch_augments='none' if not _remaining_augments(cfg) else 'padding only',
        loss=loss, batch_size=loader.get('batch_size'))
    return cfg, record


def _remaining_augments(cfg: Config) -> bool:
    pre = cfg.model.get('data_preprocessor')
    return bool(isinstance(pre, dict) and pre.get('batch_augments'))
