"""Plumbing of the training loop (`hashjax.runtime.loop`): progress reporting, metrics.jsonl
rows read back one step late, deterministic batches prepared ahead, the NaN/inf check, and
disk-aware JSON files. Knows nothing about any job."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from hashjax.runtime import parallel
from hashjax.runtime.disk import append_or_warn, write_or_warn
from hashjax.runtime.errors import DivergedError


def diverged(what: str, last_checkpoint: str | None) -> DivergedError:
  """The error for a run that turned non-finite (`what`: where, e.g. 'loss at step 4 (...)').
  `last_checkpoint`: e.g. 'step 2 in DIR', or None when no checkpoint was saved."""
  if last_checkpoint is None:
    return DivergedError(f'non-finite {what}; no checkpoint was saved yet; start again with '
                         'a lower learning rate')
  return DivergedError(f'non-finite {what}; the last good checkpoint is {last_checkpoint}; '
                       'resume from it with a lower learning rate')


def check_finite(row: dict[str, Any], keys: tuple[str, ...],
                 last_checkpoint: str | None | Callable[[], str | None]) -> None:
  """Raises `DivergedError` if any of `keys` in a metrics row is NaN or infinite.
  `last_checkpoint` may be a function, called only then."""
  bad = {k: row[k] for k in keys if k in row and not math.isfinite(row[k])}
  if bad:
    shown = ', '.join(f'{k}={v}' for k, v in bad.items())
    last = last_checkpoint() if callable(last_checkpoint) else last_checkpoint
    raise diverged(f'loss at step {row["step"]} ({shown})', last)


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point leaf of `tree` is free of NaN and ±inf (a scalar bool)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class Reporter(Protocol):
  """What the loop tells its caller (the CLI shows it; tests may record it)."""

  def start(self, total_steps: int, first_step: int) -> None: ...
  def log(self, row: dict[str, Any]) -> None: ...
  def evaluated(self, results: dict[str, Any]) -> None: ...
  def close(self) -> None: ...


class SilentReporter:
  def start(self, total_steps, first_step):
    pass

  def log(self, row):
    pass

  def evaluated(self, results):
    pass

  def close(self):
    pass


def write_json(path: str, obj) -> bool:
  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write('\n')
  return write_or_warn(path, write)


def json_line(row: dict[str, Any]) -> str:
  """One JSON line; NaN and ±inf (not JSON) are written as null."""
  clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v
           for k, v in row.items()}
  return json.dumps(clean) + '\n'


def append_row(path: str, row: dict[str, Any]) -> bool:
  """Appends `row` to a .jsonl file (a full disk gives a warning, not an exception)."""
  return append_or_warn(path, json_line(row))


class RowFile:
  """A .jsonl file that loses no row to a full disk: a row that could not be appended is
  kept and written, in order, with the next one or by `retry()`."""

  def __init__(self, path: str):
    self.path = path
    self.unwritten: list[dict[str, Any]] = []

  def append(self, row: dict[str, Any]) -> bool:
    """Appends the rows kept back, then `row`; whether all are written."""
    self.unwritten.append(row)
    return self.retry()

  def retry(self) -> bool:
    """Writes the rows kept back (whole lines or nothing); whether none is left."""
    if self.unwritten and append_or_warn(self.path,
                                         ''.join(json_line(r) for r in self.unwritten)):
      self.unwritten = []
    return not self.unwritten


def read_rows(path: str) -> list[dict[str, Any]]:
  """The rows of a .jsonl file ([] when it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(path: str, last_step: int) -> None:
  """Drops the rows after `last_step` (a resumed run writes them again) and a torn row (a
  crash during its write): the file is cut in place at the first such row. Cutting needs no
  free space, so a full disk cannot leave rows that the resumed run then writes twice."""
  try:
    f = open(path, 'r+b')  # pylint: disable=consider-using-with
  except FileNotFoundError:
    return
  with f:
    offset = 0
    for line in f:
      if line.strip():
        try:
          step = json.loads(line)['step']
        except (ValueError, KeyError, TypeError):
          break
        if not line.endswith(b'\n') or step > last_step:
          break
      offset += len(line)
    f.truncate(offset)


def fetch_row(step: int, metrics_dev, examples_per_sec: float, extra) -> dict[str, Any]:
  row = {k: float(v) for k, v in jax.device_get(metrics_dev).items()}
  row.update(step=step, examples_per_sec=examples_per_sec, **extra)
  return row


class MetricsLog:
  """metrics.jsonl rows, each fetched from the device one step after it was computed (the
  device never waits for logging). `extra()` adds host values (e.g. checkpoint counters).
  Only the main process writes (and fetches)."""

  def __init__(self, path: str, reporter: Reporter, extra: Callable[[], dict[str, Any]]):
    self.file, self._reporter, self._extra = RowFile(path), reporter, extra
    self._pending = None
    self._main = parallel.is_main_process()

  def push(self, step: int, metrics_dev, examples_per_sec: float):
    self.flush()
    if self._main:
      self._pending = (step, metrics_dev, examples_per_sec)

  def flush(self) -> dict[str, Any] | None:
    """Writes the pending row, if any, and returns it."""
    if self._pending is None:
      return None
    row = fetch_row(*self._pending, self._extra())
    self._pending = None
    self.file.append(row)
    self._reporter.log(row)
    return row


def prefetch(make_batch: Callable[[int], Any], steps: range, depth: int = 2):
  """Yields make_batch(step) for each step, preparing the next `depth` batches in a
  background thread while the device runs the current step (loading, decoding and the
  host→device copy overlap with compute)."""
  import collections  # pylint: disable=g-import-not-at-top
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    queue = collections.deque()
    it = iter(steps)
    for step in it:
      queue.append(pool.submit(make_batch, step))
      if len(queue) > depth:
        break
    while queue:
      batch = queue.popleft().result()
      nxt = next(it, None)
      if nxt is not None:
        queue.append(pool.submit(make_batch, nxt))
      yield batch


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Positions (into the training set) of the examples of global batch `step`.

  The training set is visited epoch by epoch, each epoch a permutation drawn from
  (seed, epoch); batches run across epoch boundaries. A function of its arguments only,
  so resuming at step t reproduces the batches of an uninterrupted run.

  Returns:
    int64 [batch_size].
  """
  positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = positions // num_examples, positions % num_examples
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch), 0xBA7C]).permutation(num_examples)
    sel = epochs == epoch
    out[sel] = perm[offsets[sel]]
  return out
