"""Re-parameterize at checkpoint save: beside every ``X.pth`` write the stock ``X_merged.pth``."""
import copy
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from ..fileio import atomic_save
from ..integrity import seal_checkpoint
from ..peft.merged_checkpoint import (build_merged_checkpoint, merged_meta_from,
                                      record_peft_meta)
from ..peft.model_merge import tuned_submodules
from ..registry import HOOKS
from .merged_twin import repair_on_resume


@HOOKS.register_module()
class ReparamCheckpointHook(Hook):
    """Writes ``X_merged.pth`` — the merged stock model — beside every checkpoint ``X.pth``.

    ``X.pth`` stays the resumable one (``--resume`` continues exactly). ``X_merged.pth`` holds a
    ``state_dict`` whose backbone keys are exactly the stock ones (neck and heads as trained) and a
    ``meta`` of plain types (method, trainable / total counts, SPT allocation, source checkpoint,
    dataset meta), so the *unmodified* upstream config and tools load it with
    ``weights_only=True`` and ``strict=True``. Methods that cannot merge (VPT, Adapter,
    SPT-Adapter) get no ``_merged`` file and the log says why.

    Must run after ``CheckpointHook`` (it does: priority ``LOWEST``).
    """
    priority = 'LOWEST'

    def __init__(self, suffix: str = '_merged'):
        self.suffix = suffix
        self._written = set()
        self._refusal_logged = False

    def before_run(self, runner):
        """Refuse, before any training, a placement whose units cannot merge although the method
        can (e.g. an SSF shift after a bias-free module): otherwise it would train and fail at the
        first checkpoint save. Methods that never merge (VPT, Adapter) only get no ``_merged``."""
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for prefix, _, method in tuned_submodules(model):
            blockers = method.merge_blockers()
            if method.mergeable and blockers:
                raise ValueError(
                    f'ReparamCheckpointHook writes merged stock checkpoints, but the '
                    f'{type(method).__name__} placement on {prefix or "the model"} cannot merge: '
                    + '; '.join(blockers) + '. Change the placement, or remove '
                    'ReparamCheckpointHook from custom_hooks to train without merged checkpoints.')

    def before_save_checkpoint(self, runner, checkpoint):
        record_peft_meta(runner.model, checkpoint)
        self._pending_meta = checkpoint.get('meta', {})
        # the weights X.pth holds: hooks before this one may have replaced the live ones
        # (EMAHook swaps in its averaged weights), and the twin must merge those
        self._pending_state = checkpoint.get('state_dict')

    def _write_for_last(self, runner):
        last = runner.message_hub.get_info('last_ckpt')
        if not last or last in self._written or not osp.isfile(last):
            return
        self._written.add(last)
        if not is_main_process():
            return
        self._write_twin(runner, last, merged_meta_from(getattr(self, '_pending_meta', {})),
                         state=getattr(self, '_pending_state', None))

    def _twin_of(self, ckpt_path):
        root, ext = osp.splitext(ckpt_path)
        return root + self.suffix + ext

    def _write_twin(self, runner, ckpt_path, meta, state=None):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model = _holding(model, state)
        blockers = [b for _, _, m in tuned_submodules(model) for b in m.merge_blockers()]
        if blockers:
            if not self._refusal_logged:
                print_log(f'ReparamCheckpointHook: no _merged checkpoint: {blockers[0]}',
                          logger='current')
                self._refusal_logged = True
            return
        ckpt = build_merged_checkpoint(model, meta, source=osp.basename(ckpt_path))
        out = self._twin_of(ckpt_path)
        atomic_save(seal_checkpoint(ckpt), out)  # (never seen half written; digest in meta)
        print_log(f'ReparamCheckpointHook: merged stock checkpoint saved to {out}', logger='current')

    # on --resume, a missing or broken twin of the resumed X.pth is written again
    def after_load_checkpoint(self, runner, checkpoint):
        self._loaded_meta = checkpoint.get('meta', {})

    def before_train(self, runner):
        if is_main_process():
            repair_on_resume(runner, self._twin_of, lambda path: self._write_twin(
                runner, path, merged_meta_from(getattr(self, '_loaded_meta', {}))))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._write_for_last(runner)

    def after_train_epoch(self, runner):
        self._write_for_last(runner)

    def after_val_epoch(self, runner, metrics=None):
        self._write_for_last(runner)

    def after_train(self, runner):
        self._write_for_last(runner)


def _holding(model, state):
    """``model``, or a copy of it holding ``state`` when that differs from its live tensors (EMA
    weights swapped into the checkpoint)."""
    if not state:
        return model
    live = model.state_dict()
    if all(k in live and v.data_ptr() == live[k].data_ptr() for k, v in state.items()):
        return model
    held = copy.deepcopy(model)
    held.load_state_dict(state, strict=True)
    return held
