"""Disk-quota-aware checkpoints: a full disk or a quota never crashes a run or loses the last
good checkpoint.

orbax's `CheckpointManager` does the writing (asynchronously by default). Around it,
`Checkpointer`:

* before each save estimates the bytes it needs (the size of the newest complete checkpoint
  on disk, or the state's nbytes when there is none, × `margin` + `slack_bytes`) and compares
  them with the space really available: `statvfs().f_bavail` of the directory and, when
  `max_bytes` is set, that byte budget minus what the directory already holds (for quotas that
  statvfs cannot see);
* when space is short, deletes old checkpoints oldest first — never the newest complete one,
  never the best one when `best_metric` is set — until the save fits, else skips the save
  with one warning (`stats['skipped']` counts skips);
* catches a write that fails anyway (ENOSPC, EDQUOT, or orbax's `RESOURCE_EXHAUSTED ...
  [os_error_code='28' or '122']`, raised by `save()` or by `wait_until_finished()`), removes the
  partial `*.orbax-checkpoint-tmp*` directory, re-reads the step list, frees space by the same
  policy and retries once, else skips. Other errors still raise;
* on start removes stale temporary directories and reports the steps it found.

The newest complete checkpoint is never touched before a newer one is complete, so a crash at
any moment leaves a restorable checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hashjax.runtime import integrity
from hashjax.runtime.disk import (
  directory_bytes,
  free_bytes,
  is_disk_full_error,
  short_error,
)
from hashjax.runtime.errors import CheckpointError

log = logging.getLogger(__name__)

_TMP_MARK = '.orbax-checkpoint-tmp'


def tree_nbytes(tree: Any) -> int:
  """Total bytes of the arrays in a pytree."""
  return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


class _HandledDiskFullFilter(logging.Filter):
  """Drops orbax's ERROR records (with their tracebacks) about a write that failed for lack
  of space: `Checkpointer` handles that failure and says so in one warning line, and the
  reports of the failed save's other writes, whose temporary folder was removed. Also drops
  asyncio's 'Task exception was never retrieved' for a TensorStore error: the siblings of a
  read or write that failed, after orbax raised the first failure to its caller."""

  def __init__(self):
    super().__init__()
    self.failed_dirs: set[str] = set()  # temporary folders of saves that failed and were handled

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    error = record.exc_info[1] if record.exc_info else None
    if error is not None and is_disk_full_error(error):
      return False
    text = f'{record.getMessage()} {error}'
    if any(d in text for d in self.failed_dirs):  # a write still in flight when it was removed
      return False
    if (record.name == 'asyncio' and str(record.msg).startswith('Task exception was never '
                                                                'retrieved')
        and _is_tensorstore_error(error)):
      return False
    return not is_disk_full_error(RuntimeError(record.getMessage()))


_DISK_FULL_FILTER = _HandledDiskFullFilter()


def _is_tensorstore_error(error: BaseException | None) -> bool:
  """An orbax read or write error from TensorStore (its spec or its details in the text)."""
  text = str(error)
  return error is not None and ('tensorstore_spec=' in text or
                                'See full TensorStore details' in text)


def _drop_closed_loop_reports() -> None:
  """After a save or restore that failed and was handled (a full disk, a damaged
  checkpoint), orbax's TensorStore reads and writes still in flight finish into the asyncio
  loop of the failed call, which is closed by then, and each one reports
  `RuntimeError: Event loop is closed` as an unraisable exception (a traceback on stderr,
  also at exit); coroutines of the failed call that are collected unfinished report their
  TensorStore errors the same way. Drops exactly those; every other report goes to the
  previous hook.
  Installed when a Checkpointer is made: a report can land before the failure reaches us."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop_reports', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
    if not (closed_loop or _is_tensorstore_error(error)):
      previous(unraisable)

  hook.drops_closed_loop_reports = True
  sys.unraisablehook = hook


@dataclasses.dataclass
class CheckpointStats:
  """Counters for metrics.jsonl: saves attempted, completed, skipped; write failures caught;
  checkpoints pruned to make room."""
  attempted: int = 0
  saved: int = 0
  skipped: int = 0
  failed_writes: int = 0
  pruned: int = 0

  def as_dict(self) -> dict[str, int]:
    return {f'checkpoint_{k}': v for k, v in dataclasses.asdict(self).items()}


def complete_steps(directory: str) -> list[int]:
  """Steps of the complete checkpoints in `directory`, ascending; [] when it does not exist
  (orbax renames a step's temporary folder to the bare step number only once it is complete)."""
  if not os.path.isdir(directory):  # e.g. deleted during the run: saves recreate it
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


class Checkpointer:
  """Saves and restores pytrees by step under `directory`, never failing for lack of space.

  Args:
    directory: where the step folders go (created if missing).
    max_to_keep: complete checkpoints kept in normal operation (the best one, when
      `best_metric` is set, is kept in addition).
    max_bytes: optional byte budget for the directory (a quota statvfs cannot see).
    margin, slack_bytes: the estimate of a save's size is last_size × margin + slack_bytes.
    best_metric, best_mode: keep the checkpoint with the best `metrics[best_metric]`
      ('max' or 'min') through pruning.
    async_save: write in a background thread; errors then surface at the next save or wait
      and are handled there.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 2, max_bytes: int | None = None,
               margin: float = 1.25, slack_bytes: int = 256 * 1024,
               best_metric: str | None = None, best_mode: str = 'max', async_save: bool = True):
    if max_to_keep < 1:
      raise ValueError(f'max_to_keep={max_to_keep} must be ≥ 1')
    if best_mode not in ('max', 'min'):
      raise ValueError(f"best_mode={best_mode!r}; accepted: 'max', 'min'")
    self.directory = os.path.abspath(directory)
    for name in ('absl', 'asyncio'):  # orbax logs through absl; added once
      logging.getLogger(name).addFilter(_DISK_FULL_FILTER)
    _drop_closed_loop_reports()
    self.max_to_keep, self.max_bytes = max_to_keep, max_bytes
    self.margin, self.slack_bytes = margin, slack_bytes
    self.best_metric, self.best_mode = best_metric, best_mode
    self.stats = CheckpointStats()
    self._best: tuple[float, int] | None = None
    self._pending: tuple[int, Any, dict | None] | None = None  # an async save not yet waited
    os.makedirs(self.directory, exist_ok=True)
    self.stale_removed = self._remove_tmp_dirs() if jax.process_index() == 0 else []
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, create=True, enable_async_checkpointing=async_save,
        # Stale temporary folders were removed above; orbax's own cleanup runs in a thread
        # that can outlive a short-lived manager and fail at interpreter exit.
        cleanup_tmp_directories=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())
    found = self.all_steps()
    removed = (f'; removed {len(self.stale_removed)} unfinished save(s)'
               if self.stale_removed else '')
    log.info('checkpoints in %s: %s%s', self.directory, found or 'none', removed)

  # -- queries ---------------------------------------------------------------------------
  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, ascending (`complete_steps`)."""
    return complete_steps(self.directory)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def restore(self, step: int, abstract_tree: Any) -> Any:
    """Restores `step` into the structure, dtypes and shardings of `abstract_tree`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_tree)
    integrity.verify(self._step_dir(step))  # before any array is read
    integrity.check_shapes(step, self._manager.item_metadata(step), abstract)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def note_metrics(self, step: int, metrics: dict[str, Any]) -> None:
    """Records the evaluation of checkpoint `step` already on disk (a resumed run re-reads
    its evaluations, so the best checkpoint stays protected)."""
    if step in self.all_steps():
      self._record_best(step, metrics)

  def set_aside(self, step: int) -> str:
    """Moves checkpoint `step` (one that does not restore) out of the step list, to
    `<directory>/damaged-<step>[-n]`, where it can be inspected; returns that path."""
    target = os.path.join(self.directory, f'damaged-{step}')
    n = 1
    while os.path.exists(target):
      target = os.path.join(self.directory, f'damaged-{step}-{n}')
      n += 1
    if jax.process_index() == 0:
      os.rename(self._step_dir(step), target)
    self._manager.reload()
    return target

  def reached_preemption(self, step: int) -> bool:
    """JAX's multi-host preemption sync point (through orbax)."""
    return bool(self._manager.reached_preemption(step))

  # -- saving ----------------------------------------------------------------------------
  def save(self, step: int, tree: Any, *, metrics: dict[str, float] | None = None,
           final: bool = False) -> bool:
    """Saves `tree` as checkpoint `step` if the disk allows; never raises for lack of space
    unless `final`.

    Args:
      step: training step. tree: the pytree to save. metrics: values for `best_metric`.
      final: this checkpoint must exist. It is waited for; it is written even when only the
        size estimate says it will not fit; when the write really fails for lack of space,
        every older checkpoint is deleted and the write tried once more (the caller has
        saved its results first); then `CheckpointError` names the directory, the bytes
        needed and free, and what to free.

    Returns:
      True if the save was started (and, with `final`, finished); False if skipped.
    """
    self._settle()
    if step in self.all_steps():
      return True
    self.stats.attempted += 1
    if not os.path.isdir(self.directory):
      log.warning('%s was deleted during the run; creating it again', self.directory)
      os.makedirs(self.directory, exist_ok=True)
      self._manager.reload()
    needed = self._estimate(tree)
    if not _agree(lambda: self._make_room(needed)):
      if not final:
        return self._skip(step, needed, final, 'not enough space')
      log.warning('the final checkpoint (step %d) needs about %d bytes by the estimate and %d '
                  'are available in %s: trying the write anyway', step, needed,
                  self._available(), self.directory)
    for attempt in (1, 2):
      error = self._write(step, tree, needed, metrics, wait=final)
      if error is None:
        return True
      if attempt == 1 and (self._make_room(needed) or (final and self._clear_for_final())):
        continue
      return self._skip(step, needed, final, f'the write failed ({error})')
    return False

  def _write(self, step, tree, needed, metrics, wait: bool) -> str | None:
    """Starts the save of `tree` (and with `wait` finishes it); a disk-full failure is
    cleaned up and returned as a short text, other errors raise."""
    try:
      self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
    except (OSError, ValueError, RuntimeError) as e:  # orbax's forms of a failed write
      if not is_disk_full_error(e):
        raise
      self._pending = None
      self._after_failed_write(step, e)
      return short_error(e)
    self._pending = (step, needed, metrics)
    return self._settle(count_skip=False) if wait else None

  def delete_older(self) -> bool:
    """Deletes every checkpoint but the newest (the best one too), to make room for a run's
    results; whether any was deleted."""
    self._settle()  # a save in flight becomes the newest first
    older = self.all_steps()[:-1]
    for s in older:
      self._delete(s, reason='to make room for the results')
    return bool(older)

  def _clear_for_final(self) -> bool:
    """Deletes every older checkpoint (the best one too: the final one replaces them) when
    that frees at least the newest one's size; False (nothing deleted) when it would not."""
    older = self.all_steps()
    freed = sum(directory_bytes(self._step_dir(s)) for s in older)
    if not older or self._available() + freed < directory_bytes(self._step_dir(older[-1])):
      return False
    for s in older:
      self._delete(s, reason='to make room for the final checkpoint')
    return True

  def wait(self):
    """Blocks until a background save has finished (a disk-full failure is handled, not
    raised)."""
    self._settle()

  def close(self):
    self._settle()
    try:
      self._manager.close()
    except (OSError, ValueError, RuntimeError) as e:  # a failed write, reported again
      if not is_disk_full_error(e):
        raise
    if self.stats.failed_writes:
      # The TensorStore writes of a failed save still in flight land within moments; let
      # them land while `_drop_closed_loop_reports` is in place, not during interpreter exit.
      time.sleep(1.0)

  # -- internals -------------------------------------------------------------------------
  def _settle(self, count_skip: bool = True) -> str | None:
    """Waits for the pending async save. On success applies retention and returns None; a
    disk-full failure is cleaned up (counted as a skipped save with `count_skip`) and
    returned as a short text."""
    try:
      self._manager.wait_until_finished()
    except (OSError, ValueError, RuntimeError) as e:  # orbax's forms of a failed write
      if not is_disk_full_error(e):
        raise
      step, _, _ = self._pending or (None, 0, None)
      self._pending = None
      self._after_failed_write(step, e)
      if count_skip:
        self.stats.skipped += 1
        log.warning('checkpoint %s was not written: %s; training continues', step, short_error(e))
      return short_error(e)
    if self._pending is not None:
      step, _, metrics = self._pending
      self._pending = None
      if jax.process_index() == 0:
        integrity.record(self._step_dir(step))
      self.stats.saved += 1
      self._record_best(step, metrics)
      self._apply_retention()
    return None

  def _after_failed_write(self, step, error):
    self.stats.failed_writes += 1
    _DISK_FULL_FILTER.failed_dirs.add(f'{self._step_dir(step)}.orbax-checkpoint-tmp')
    if jax.process_index() == 0:
      self._remove_tmp_dirs()
    self._manager.reload()
    log.warning('checkpoint write for step %s failed: %s', step, short_error(error))

  def _skip(self, step, needed, final, why) -> bool:
    if final:
      raise CheckpointError(self._final_message(step, needed, why))
    self.stats.skipped += 1
    log.warning('skipping checkpoint at step %d: %s (needs ~%d bytes, %d available in %s); '
                'training continues', step, why, needed, self._available(), self.directory)
    return False

  def _final_message(self, step, needed, why) -> str:
    return (f'the final checkpoint (step {step}) could not be written to {self.directory}: '
            f'{why}; it needs about {needed} bytes and {self._available()} are free. The '
            'results files are written. Free that much space (or raise checkpoint.max_bytes), '
            'then rerun the same command: ' + (
                f'it resumes from step {self.latest_step()} and saves the final checkpoint'
                if self.all_steps() else 'no checkpoint is left, so it trains again'))

  def _estimate(self, tree) -> int:
    steps = self.all_steps()
    last = directory_bytes(self._step_dir(steps[-1])) if steps else tree_nbytes(tree)
    return int(last * self.margin) + self.slack_bytes

  def _available(self) -> int:
    available = free_bytes(self.directory)
    if self.max_bytes is not None:
      available = min(available, self.max_bytes - directory_bytes(self.directory))
    return available

  def _protected(self, steps: list[int]) -> set[int]:
    keep = {steps[-1]} if steps else set()
    if self._best is not None and self._best[1] in steps:
      keep.add(self._best[1])
    return keep

  def _make_room(self, needed: int) -> bool:
    """Deletes old checkpoints (oldest first, never protected ones) until `needed` fits."""
    while self._available() < needed:
      steps = self.all_steps()
      victims = [s for s in steps if s not in self._protected(steps)]
      if not victims:
        return False
      self._delete(victims[0], reason='to make room')
    return True

  def _apply_retention(self):
    steps = self.all_steps()
    protected = self._protected(steps)
    newest = set(steps[-self.max_to_keep:])
    for s in steps:
      if s not in newest and s not in protected:
        self._delete(s, reason=None)

  def _delete(self, step: int, reason: str | None):
    self._manager.delete(step)
    if jax.process_index() == 0 and os.path.exists(self._step_dir(step)):
      shutil.rmtree(self._step_dir(step), ignore_errors=True)
    self._manager.reload()
    if reason:
      self.stats.pruned += 1
      log.warning('deleted checkpoint %d %s', step, reason)

  def _record_best(self, step, metrics):
    if (self.best_metric is None or not metrics or metrics.get(self.best_metric) is None):
      return
    value = float(metrics[self.best_metric])
    better = (self._best is None or
              (value > self._best[0] if self.best_mode == 'max' else value < self._best[0]))
    if better:
      self._best = (value, step)

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _remove_tmp_dirs(self) -> list[str]:
    removed = []
    if not os.path.isdir(self.directory):
      return removed
    for name in os.listdir(self.directory):
      if _TMP_MARK in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        removed.append(name)
    return removed


def _agree(decide) -> bool:
  """Process 0 runs `decide()` (it alone deletes checkpoints) and every process gets its
  answer, so all hosts skip or save the same step (the save is collective)."""
  if jax.process_count() == 1:
    return bool(decide())
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  mine = bool(decide()) if jax.process_index() == 0 else False
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(mine)))
