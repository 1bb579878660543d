"""Trainable-parameter report at the start of training."""
from collections import OrderedDict

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from ..peft.model_merge import tuned_submodules
from ..peft.param_count import format_trainable
from ..registry import HOOKS


def trainable_report(model):
    """``(rows, trainable, total)``; rows are ``(group, trainable, total)`` per top-level module,
    with a tuned backbone split into its PEFT tensors and its frozen stock weights."""
    if is_model_wrapper(model):
        model = model.module
    tuned = {prefix: method for prefix, _, method in tuned_submodules(model)}
    groups = OrderedDict()
    for name, param in model.named_parameters():
        top = name.split('.', 1)[0]
        prefix = next((p for p in tuned if name.startswith(p + '.')), None)
        if prefix is not None:
            label = f'{prefix} ({type(tuned[prefix]).__name__})'
        else:
            label = top
        trainable, total = groups.get(label, (0, 0))
        groups[label] = (trainable + (param.numel() if param.requires_grad else 0),
                         total + param.numel())
    rows = [(label, t, n) for label, (t, n) in groups.items()]
    return rows, sum(r[1] for r in rows), sum(r[2] for r in rows)


def format_report(model) -> str:
    rows, trainable, total = trainable_report(model)
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f'{"group":<{width}}  {"trainable":>12}  {"total":>12}  {"%":>7}']
    for label, t, n in rows:
        lines.append(f'{label:<{width}}  {t:>12,}  {n:>12,}  {100 * t / max(n, 1):>6.2f}%')
    lines.append(format_trainable(trainable, total))
    return '\n'.join(lines)


@HOOKS.register_module()
class TrainableParamsReportHook(Hook):
    """Logs, before training, trainable / total parameters per module group and overall."""
    priority = 'LOW'

    def before_train(self, runner):
        print_log('\n' + format_report(runner.model), logger='current')
