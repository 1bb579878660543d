"""``mmssf.AtomicCheckpointHook``: mmengine's ``CheckpointHook`` made crash-consistent, verified
and exactly resumable. ``tools/train.py`` uses it in place of the config's ``CheckpointHook``.

What mmengine 0.10.7 does and what this hook does instead:

* ``X.pth`` is written in place (a kill leaves a truncated file under the final name): here it
  goes through :class:`AtomicLocalBackend` — a temporary name in the same folder, fsync, rename.
* ``last_checkpoint`` is written in place *before* it is known that ``X.pth`` is complete: here it
  is written atomically after ``X.pth`` is, so it only ever names a complete file.
* With ``max_keep_ckpts`` the oldest checkpoint is deleted *before* the new one is written (a kill
  in between loses the run when ``max_keep_ckpts=1``): here old checkpoints — and their
  ``X_merged.pth`` twins, which mmengine never rotates — are removed only after the new
  checkpoint, ``last_checkpoint`` and the new twin are written. The same for ``save_best``: the
  previous best file goes after the new one is written.
* No random generator state is saved: here the states of every rank are saved
  (``checkpoint['rng_state']``) and restored on ``--resume`` right before the first number is
  drawn, and validation does not advance the training generators, so a resumed run is
  bit-identical to an uninterrupted one (dropout, drop-path and random augmentation included).
* Nothing detects corrupted bytes: the SHA-256 of the tensor payload is recorded in the meta
  (:mod:`mmssf.integrity`) and verified on every load in processes that import mmssf.
* A full disk gives torch's ``unexpected pos`` error and a broken file: here a
  :class:`~mmssf.fileio.CheckpointWriteError` naming the path and the bytes needed, no file under
  the final name, the previous checkpoint and ``last_checkpoint`` untouched.

Arguments are ``CheckpointHook``'s plus ``twin_suffixes`` (files ``X{suffix}.pth`` that rotate
with ``X.pth``). Remote ``out_dir`` / ``backend_args`` keep mmengine's own writing.
"""
import os
import os.path as osp
from typing import List, Sequence

from mmengine.dist import all_gather_object, get_rank, get_world_size, is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log

from ..fileio import (CheckpointWriteError, atomic_write_bytes, atomic_write_text, is_temp_file,
                      TMP_MARK)
from ..integrity import seal_checkpoint
from ..registry import HOOKS
from .rng_state import capture_rng_state, restore_rng_state

__all__ = ['AtomicCheckpointHook', 'AtomicLocalBackend', 'use_atomic_checkpoints']

BACKEND = 'mmssf_atomic_local'
#: message-hub key: steps whose checkpoints the save that recorded it rotates out
ROTATED = 'mmssf_rotated_ckpt_ids'


@register_backend(BACKEND, force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are atomic (:mod:`mmssf.fileio`)."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(obj, str(filepath))

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write_bytes(obj.encode(encoding), str(filepath))


def twin_path(ckpt_path: str, suffix: str) -> str:
    root, ext = osp.splitext(ckpt_path)
    return root + suffix + ext


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose files are never seen half written, whose rotation never deletes
    the last complete checkpoint, and whose checkpoints resume exactly (see the module doc).

    Args:
        twin_suffixes (Sequence[str]): ``X{suffix}.pth`` files written beside ``X.pth`` by other
            hooks (``mmssf.ReparamCheckpointHook``'s ``_merged``); rotation removes them with
            their ``X.pth``.
        **kwargs: ``mmengine.hooks.CheckpointHook``'s arguments.
    """

    def __init__(self, *args, twin_suffixes: Sequence[str] = ('_merged', ), **kwargs):
        super().__init__(*args, **kwargs)
        self.twin_suffixes = tuple(twin_suffixes)
        remote = self.out_dir is not None and '://' in str(self.out_dir)
        self.atomic = (self.backend_args is None and self.file_client_args is None
                       and not remote)
        if self.atomic:
            self.backend_args = dict(backend=BACKEND)
        self._pending_rng = None
        self._pending_removal: List[str] = []
        self._resumed_rng = None
        self._val_snapshot = None

    # -- set-up ---------------------------------------------------------------------------------
    def before_run(self, runner) -> None:
        # the helper runs last (priority LOWEST, registered after every configured hook): it
        # seals the checkpoint after all other hooks edited it, and rotates after the twins
        runner.register_hook(_CheckpointFinisher(self), priority='LOWEST')

    def before_train(self, runner) -> None:
        trimmed = []
        if self.max_keep_ckpts > 0:
            kept = list(runner.message_hub.runtime_info.get('keep_ckpt_ids', []))
            trimmed = kept[:max(len(kept) - self.max_keep_ckpts, 0)]
        super().before_train(runner)  # (removes the trimmed X.pth itself)
        if not is_main_process() or not self.atomic:
            return
        for step in trimmed:
            self._remove_files(self._twins(self._path(step)))
        self._remove_stale_files(runner)

    # -- saving ---------------------------------------------------------------------------------
    def _path(self, step) -> str:
        return self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))

    def _twins(self, ckpt_path: str) -> List[str]:
        return [twin_path(ckpt_path, s) for s in self.twin_suffixes]

    def _save_checkpoint_with_step(self, runner, step, meta):
        self._finish_pending()
        hub = runner.message_hub
        before = dict(keep=list(getattr(self, 'keep_ckpt_ids', [])),
                      hub_keep=hub.runtime_info.get('keep_ckpt_ids'),
                      last_ckpt=self.last_ckpt, hub_last=hub.runtime_info.get('last_ckpt'),
                      hub_rotated=hub.runtime_info.get(ROTATED))
        removed_steps = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                removed_steps.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        # recorded in the new checkpoint: a resume after a kill before their removal removes them
        hub.update_info(ROTATED, list(removed_steps))
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        hub.update_info('last_ckpt', self.last_ckpt)
        self._pending_rng = self._rng_of_all_ranks()
        try:
            runner.save_checkpoint(
                self.out_dir, ckpt_filename, self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler, meta=meta,
                by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
            if is_main_process():
                save_file = osp.join(runner.work_dir, 'last_checkpoint')
                if self.atomic:
                    atomic_write_text(self.last_ckpt, save_file)
                else:
                    with open(save_file, 'w') as f:
                        f.write(self.last_ckpt)
        except CheckpointWriteError:
            # nothing new on disk: keep the in-memory bookkeeping in step with it
            if self.max_keep_ckpts > 0:
                self.keep_ckpt_ids.clear()
                self.keep_ckpt_ids.extend(before['keep'])
            for key, value in (('keep_ckpt_ids', before['hub_keep']),
                               ('last_ckpt', before['hub_last']), (ROTATED, before['hub_rotated'])):
                if value is not None:
                    hub.update_info(key, value)
            self.last_ckpt = before['last_ckpt']
            raise
        finally:
            self._pending_rng = None
        if is_main_process():
            for old in removed_steps:
                path = self._path(old)
                self._pending_removal += [path] + self._twins(path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        # mmengine removes the previous best checkpoint before writing the new one: defer it
        backend, deferred = self.file_backend, []
        self.file_backend = _DeferredRemoval(backend, deferred)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        self._remove_files(deferred)

    def _rng_of_all_ranks(self) -> dict:
        state = self._val_snapshot or capture_rng_state()  # (saved during val: the train state)
        states = all_gather_object(state) if get_world_size() > 1 else [state]
        return dict(world_size=len(states), ranks=states)

    def seal(self, checkpoint: dict) -> None:
        if self._pending_rng is not None:
            checkpoint['rng_state'] = self._pending_rng
        seal_checkpoint(checkpoint)

    # -- rotation -------------------------------------------------------------------------------
    def _finish_pending(self) -> None:
        paths, self._pending_removal = self._pending_removal, []
        self._remove_files(paths)

    def _remove_files(self, paths) -> None:
        for path in paths:
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # (deepspeed checkpoints are folders)
                self.file_backend.rmtree(path)

    def _remove_stale_files(self, runner) -> None:
        """What a kill left: temporary files, and the rotated-out checkpoints (and twins) that
        the newest checkpoint records as due for removal."""
        if not osp.isdir(self.out_dir):
            return
        for name in os.listdir(self.out_dir):
            if is_temp_file(name) and not _writer_alive(name):
                path = osp.join(self.out_dir, name)
                self._remove_files([path])
                print_log(f'AtomicCheckpointHook: removed {path} (left by a killed run)',
                          logger='current')
        for step in runner.message_hub.runtime_info.get(ROTATED, []):
            path = self._path(step)
            self._remove_files([path] + self._twins(path))

    # -- resuming -------------------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint) -> None:
        if not getattr(runner, '_resume', False):
            return
        saved = checkpoint.get('rng_state')
        if not isinstance(saved, dict):
            print_log('AtomicCheckpointHook: the resumed checkpoint holds no random generator '
                      'states (not written by this hook): the run continues from the configured '
                      'seed, not bit-identical to an uninterrupted run', logger='current')
            return
        if saved.get('world_size') != get_world_size():
            print_log(f'AtomicCheckpointHook: the checkpoint holds random generator states of '
                      f'{saved.get("world_size")} processes but this run has {get_world_size()}:'
                      f' not restored', logger='current')
            return
        self._resumed_rng = saved['ranks'][get_rank()]

    def restore_resumed_rng(self) -> None:
        state, self._resumed_rng = self._resumed_rng, None
        if state is not None:
            note = restore_rng_state(state)
            if note:
                print_log(f'AtomicCheckpointHook: {note}', logger='current')


class _DeferredRemoval:
    """A file backend whose ``remove`` / ``rmtree`` only note the path (removed later)."""

    def __init__(self, backend, deferred: list):
        self._backend, self._deferred = backend, deferred

    def remove(self, path) -> None:
        self._deferred.append(path)

    rmtree = remove

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _writer_alive(temp_name: str) -> bool:
    """Whether the process that made ``temp_name`` (``.X.tmp-<pid>-<rand>``) still runs."""
    try:
        pid = int(temp_name.rsplit(TMP_MARK, 1)[1].split('-')[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _CheckpointFinisher(Hook):
    """Runs after every other hook (see :meth:`AtomicCheckpointHook.before_run`)."""
    priority = 'LOWEST'

    def __init__(self, owner: AtomicCheckpointHook):
        self.owner = owner

    def before_save_checkpoint(self, runner, checkpoint):
        self.owner.seal(checkpoint)

    # rotation after the twins of the new checkpoint are written
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.owner._finish_pending()

    def after_train_epoch(self, runner):
        self.owner._finish_pending()

    def after_val_epoch(self, runner, metrics=None):
        self.owner._finish_pending()

    def after_train(self, runner):
        self.owner._finish_pending()

    # the restored generator state is put back right before the first number is drawn: the
    # first batch of the resumed epoch, or — iteration-based loops replay the batches already
    # trained to reach their position — right before the first batch that is trained
    def before_train(self, runner):
        loop = runner.train_loop
        if self.owner._resumed_rng is None or not hasattr(loop, 'dataloader_iterator'):
            return
        loop.dataloader_iterator = _RestoreAfterReplay(loop, loop.dataloader_iterator,
                                                       loop.iter, self.owner.restore_resumed_rng)

    def before_train_epoch(self, runner):
        if not hasattr(runner.train_loop, 'dataloader_iterator'):
            self.owner.restore_resumed_rng()

    # validation does not advance the training generators
    def before_val(self, runner):
        self.owner._val_snapshot = capture_rng_state()

    def after_val(self, runner):
        state, self.owner._val_snapshot = self.owner._val_snapshot, None
        if state is not None:
            restore_rng_state(state)


class _RestoreAfterReplay:
    """Wraps an iteration-based loop's data iterator: after the ``replay`` batches the loop
    skips on resume, restores the generators, then hands the loop its own iterator back."""

    def __init__(self, loop, iterator, replay: int, restore):
        self.loop, self.iterator, self.replay, self.restore = loop, iterator, replay, restore

    def __iter__(self):
        return self

    def __getattr__(self, name):  # (anything else: the wrapped iterator's)
        return getattr(self.iterator, name)

    def __next__(self):
        if self.replay > 0:
            self.replay -= 1
            return next(self.iterator)
        self.restore()
        self.loop.dataloader_iterator = self.iterator
        return next(self.iterator)


def use_atomic_checkpoints(cfg) -> None:
    """Make ``cfg.default_hooks.checkpoint`` an :class:`AtomicCheckpointHook` (same arguments)
    when it is mmengine's plain ``CheckpointHook``; other checkpoint hooks are left alone."""
    hooks = cfg.get('default_hooks') or {}
    hook = hooks.get('checkpoint')
    if not isinstance(hook, dict):
        return
    if hook.get('type') in ('CheckpointHook', 'mmengine.CheckpointHook', CheckpointHook):
        hook['type'] = 'mmssf.AtomicCheckpointHook'
