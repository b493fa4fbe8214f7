"""The training loop, once, for every job (HashNet, the GAN, and the jobs to come).

A job says what is particular to it; `run(job, workdir)` does the rest: restore-or-init,
config.json, batches prepared ahead in a thread, metrics.jsonl rows read back one step late,
a NaN/inf stop naming the last good checkpoint (`errors.DivergedError`), SIGTERM/SIGINT
save-and-stop, evaluations every `eval_every` steps into eval.jsonl, checkpoints every
`checkpoint_every` steps with the disk-aware `Checkpointer` (`checkpoint.best_metric`
honoured, also across resumes), and at the end the final evaluation (eval.json, written
before the final checkpoint so a full disk cannot lose it) and the final checkpoint.

The contract (`Job`, a base class with defaults): what a job provides.

  cfg             settings with batch_size, num_steps, seed, log_every, eval_every,
                  checkpoint_every and checkpoint (a `config.CheckpointConfig`).
  config          what config.json records (a ConfigDict or dataclass; default cfg).
  loss_keys       metrics whose non-finite value stops the run.
  metric_modes    evaluation keys usable as `checkpoint.best_metric` → 'max' or 'min'.
  eval_at_start   evaluate the untrained model too (step 0 of a fresh run).
  num_examples    training examples; batch t is `data.batch_indices(num_examples,
                  batch_size, t, seed)`, of which this process loads its slice.
  examples(positions) → {name: host array [b, ...]} for those examples.
  init_state(rng) → a fresh state pytree (jit-traceable; the loop jits it replicated). The
                  state is what a checkpoint holds, with the step RNG key.
  start(state, first_step) → state: before the first step (e.g. load pretrained weights
                  into a fresh state).
  train_step(state, batch, rng) → (state, metrics): pure; the loop jits it with the batch
                  sharded over devices and the state donated.
  after_step(state, step): host work after each step (e.g. sample grids).
  logged(row, last_good): each metrics.jsonl row once written (e.g. to warn about a run going
                  wrong); last_good() → the newest complete checkpoint's path or None.
  evaluate(state, step) → a JSON row or None; collective across processes.
  upgrade_row(row) → an eval.jsonl row written by an earlier version, in today's keys.
  finish(state, eval_row, last_log_row) → eval.json's content; writes the job's outputs
                  (an output a full disk kept out raises `disk.OutputNotWritten`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from hashjax import ops
from hashjax.runtime import disk, parallel, plumbing
from hashjax.runtime import workdir as workdir_lib
from hashjax.runtime.checkpoint import Checkpointer
from hashjax.runtime.errors import ConfigError, ResultsNotWritten
from hashjax.runtime.preemption import PreemptionGuard

log = logging.getLogger(__name__)


class Job:
  """A job of `run` (see the module docstring). Subclasses set `cfg`, `loss_keys`,
  `num_examples`, `init_state` and `train_step`, and define `examples`, `evaluate` and
  `finish`; the rest has defaults."""
  cfg: Any
  config: Any = None  # what config.json records: a ConfigDict or a config dataclass
  loss_keys: tuple[str, ...] = ()
  metric_modes: dict[str, str] = {}
  resumable: frozenset[str] = frozenset()  # settings that may change on resume, besides RESUMABLE
  added_settings: dict[str, Any] = {}  # settings older runs lack → the value they had
  eval_at_start: bool = False
  num_examples: int
  train_step: Callable[[Any, dict[str, jax.Array], jax.Array], tuple[Any, dict[str, jax.Array]]]
  init_state: Callable[[jax.Array], Any]

  def config_dict(self) -> dict[str, Any]:
    config = self.cfg if self.config is None else self.config
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config.to_dict()

  def examples(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def start(self, state: Any, first_step: int) -> Any:
    del first_step
    return state

  def after_step(self, state: Any, step: int) -> None:
    del state, step

  def logged(self, row: dict[str, Any], last_good: Callable[[], str | None]) -> None:
    del row, last_good

  def evaluate(self, state: Any, step: int) -> dict[str, Any] | None:
    del state, step
    return None

  def upgrade_row(self, row: dict[str, Any]) -> dict[str, Any]:
    return row

  def check_data(self, resuming: bool) -> None:
    """Called before config.json is written: a resumed run (`resuming`) checks that its data
    set is what it was trained on, a fresh one records it (`data.manifest`); default: no
    record."""
    del resuming

  def finish(self, state: Any, eval_row: dict[str, Any] | None,
             last_log_row: dict[str, Any] | None) -> dict[str, Any]:
    raise NotImplementedError


def jit_train_step(train_step, mesh: Mesh):
  """`train_step(state, batch, rng)` jitted over the mesh: the batch sharded on 'data', state
  and RNG key replicated, the state donated; compiled with `ops.compiler_options()` (on CPU:
  Eigen convolutions and dots; docs/PERFORMANCE.md)."""
  repl, rows = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(train_step, in_shardings=(repl, rows, repl), out_shardings=(repl, repl),
                 donate_argnums=0, compiler_options=ops.compiler_options())


def init_replicated(init_state: Callable[[jax.Array], Any], rng, mesh: Mesh):
  """`init_state(rng)` jitted with replicated output shardings: nothing is built on one
  device first."""
  return jax.jit(init_state, out_shardings=parallel.replicated(mesh))(
      parallel.replicate(rng, mesh))


def global_batch(examples: Callable[[np.ndarray], dict[str, np.ndarray]], num_examples: int,
                 batch_size: int, seed: int, step: int, mesh: Mesh) -> dict[str, jax.Array]:
  """Batch `step` as global arrays [batch_size, ...]: positions from
  `data.batch_indices(num_examples, batch_size, step, seed)`; this process loads only its
  slice of them through `examples(positions)`."""
  positions = plumbing.batch_indices(num_examples, batch_size, step, seed)
  return parallel.global_batch(examples(positions[parallel.process_slice(batch_size)]), mesh)


def checkpoint_tree(state, rng, step: int, batch_size: int) -> dict[str, Any]:
  """What a checkpoint holds: the job's state, the step RNG key and the data position
  (examples seen; batches are functions of (seed, step), so this restores them exactly).
  `step` is passed in, not read from the device, so saving does not wait for the step."""
  return {'state': state, 'rng': rng, 'examples_seen': np.asarray(step * batch_size, np.int64)}


def fresh_state(job: Job, mesh: Mesh) -> tuple[Any, jax.Array]:
  """(state, step RNG key) of a new run: both from PRNGKey(seed), replicated."""
  init_rng, step_rng = np.asarray(jax.random.split(jax.random.PRNGKey(job.cfg.seed)))
  return init_replicated(job.init_state, init_rng, mesh), parallel.replicate(step_rng, mesh)


def abstract_state(job: Job, mesh: Mesh) -> tuple[Any, jax.ShapeDtypeStruct]:
  """Shapes, dtypes and (replicated) shardings of (state, step RNG key), built without
  initialising anything."""
  key = jax.eval_shape(jax.random.PRNGKey, 0)
  repl = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                      (jax.eval_shape(job.init_state, key), key))


def restore(job: Job, ckpt: Checkpointer, step: int, mesh: Mesh) -> tuple[Any, jax.Array]:
  """(state, step RNG key) of checkpoint `step`; a batch size unlike the run's is a
  `ConfigError`."""
  state, rng = abstract_state(job, mesh)
  restored = ckpt.restore(step, checkpoint_tree(state, rng, 0, job.cfg.batch_size))
  seen, at = int(restored['examples_seen']), int(restored['state'].step)
  if seen != at * job.cfg.batch_size:
    raise ConfigError(f'batch_size={job.cfg.batch_size} differs from the run in '
                      f'{os.path.dirname(ckpt.directory)} ({seen} examples in {at} steps); '
                      'resume with its batch size or use a new --workdir')
  return restored['state'], restored['rng']


# What orbax and tensorstore raise for a checkpoint whose files are truncated or missing.
DAMAGED_CHECKPOINT_ERRORS = (OSError, ValueError, KeyError, RuntimeError, EOFError)


def is_damaged_checkpoint_error(error: BaseException) -> bool:
  """Whether restoring raised because the checkpoint's files are damaged: one of
  DAMAGED_CHECKPOINT_ERRORS (not a ConfigError), or the plain Exception that orbax wraps a
  TensorStore read error in."""
  if isinstance(error, ConfigError):
    return False
  return isinstance(error, DAMAGED_CHECKPOINT_ERRORS) or (
      type(error) is Exception and 'error while reading' in str(error))  # pylint: disable=unidiomatic-typecheck


def make_checkpointer(job: Job, workdir: str) -> Checkpointer:
  """The run's `Checkpointer` under <workdir>/checkpoints; an unknown `best_metric` is a
  `ConfigError` naming the metrics this job evaluates."""
  c = job.cfg.checkpoint
  if c.best_metric is not None and c.best_metric not in job.metric_modes:
    accepted = ', '.join(sorted(job.metric_modes)) or 'none (this job evaluates nothing)'
    raise ConfigError(f'checkpoint.best_metric={c.best_metric!r} is not a metric of this '
                      f'job; accepted: {accepted}')
  mode = job.metric_modes.get(c.best_metric, 'max')
  return Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=c.max_to_keep,
                      max_bytes=c.max_bytes, best_metric=c.best_metric, best_mode=mode,
                      async_save=c.async_save)


# Settings every job may change when it resumes (the job's `resumable` adds its own).
RESUMABLE = frozenset({'num_steps', 'log_every', 'eval_every', 'checkpoint_every',
                       'checkpoint'})


def run(make_job: Callable[[Any, str], Job], config, workdir: str, *,
        reporter: plumbing.Reporter | None = None) -> dict[str, Any]:
  """Trains the job `make_job(config, workdir)` for `cfg.num_steps` steps in `workdir`,
  resuming from its newest checkpoint that restores.

  The workdir is held by this run (`workdir.hold`) and SIGTERM / SIGINT are caught from the
  start. Only process 0 writes config.json, metrics.jsonl, eval.jsonl and eval.json;
  checkpoints are written collectively.

  Returns:
    eval.json's content (the job's `finish`), or {'preempted_at_step': step, 'signal': name}
    after SIGTERM / SIGINT stopped the run (and saved that step, if it trained one).
  Raises:
    errors.DivergedError: a loss in `job.loss_keys` turned NaN/inf (nothing non-finite
      is saved). ConfigError, WorkdirError, data errors: bad settings or workdir (one line
      each; a resume with changed settings outside `RESUMABLE` and `job.resumable` is one).
      CheckpointError: the final checkpoint could not be written (eval.json is written
      first).
  """
  with PreemptionGuard() as guard, workdir_lib.hold(workdir):
    session = _Session(make_job(config, workdir), workdir, reporter, guard)
    try:
      return session.run()
    finally:
      session.close()


class _Session:
  """One run of the loop over a job: `run`'s pieces, each short."""

  def __init__(self, job: Job, workdir: str, reporter: plumbing.Reporter | None,
               guard: PreemptionGuard):
    self.job, self.cfg, self.workdir, self.guard = job, job.cfg, workdir, guard
    self.mesh = parallel.make_mesh()
    parallel.check_batch_size(self.cfg.batch_size, self.mesh)
    self.main = parallel.is_main_process()
    self.reporter = reporter if reporter is not None and self.main else plumbing.SilentReporter()
    self.ckpt = make_checkpointer(job, workdir)
    guard.checkpointer = self.ckpt  # multi-host: the preemption sync point
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self.eval_path = os.path.join(workdir, 'eval.jsonl')
    self.eval_log = plumbing.RowFile(self.eval_path)
    self.metrics_log = plumbing.MetricsLog(self.metrics_path, self.reporter,
                                           self.ckpt.stats.as_dict)
    self.last_row: dict[str, Any] | None = None
    self.results: dict[str, Any] = {}

  def close(self):
    self.ckpt.close()
    self.reporter.close()

  def run(self) -> dict[str, Any]:
    if self.ckpt.all_steps():
      workdir_lib.check_resume(self.workdir, self.job.config_dict(),
                               RESUMABLE | type(self.job).resumable, self.job.added_settings)
    self.job.check_data(resuming=bool(self.ckpt.all_steps()))
    if self.main:
      plumbing.write_json(os.path.join(self.workdir, 'config.json'), self.job.config_dict())
    state, rng, first_step = self.restore_or_init()
    self.reporter.start(self.cfg.num_steps, first_step)
    if first_step < self.cfg.num_steps and self.guard.should_stop(first_step):
      log.warning('%s received before step %d: nothing new to save; rerun to resume',
                  self.guard.signal_name, first_step)  # and no evaluation at the start
      return {'preempted_at_step': first_step, 'signal': self.guard.signal_name}
    if first_step == 0 and self.job.eval_at_start:
      self.evaluate(state, 0)
    state, step_metrics, stopped_by = self.train(state, rng, first_step)
    if stopped_by is not None:
      log.warning('%s received: saved step %d in %s; rerun to resume', stopped_by,
                  int(state.step), self.ckpt.directory)
      return {'preempted_at_step': int(state.step), 'signal': stopped_by}
    return self.finish(state, rng, step_metrics)

  def restore_newest(self) -> tuple[Any, jax.Array]:
    """The newest checkpoint that restores; a damaged one (unreadable files) is moved aside
    with one warning and the one before is tried. A fresh state when none is left."""
    for step in reversed(self.ckpt.all_steps()):
      try:
        state, rng = restore(self.job, self.ckpt, step, self.mesh)
      except Exception as e:  # pylint: disable=broad-except  # orbax raises a plain Exception
        if not is_damaged_checkpoint_error(e):
          raise
        moved = self.ckpt.set_aside(step)
        log.warning('checkpoint %d does not restore (%s); moved it to %s; trying the one '
                    'before', step, disk.short_error(e), moved)
        continue
      log.info('resuming from checkpoint step %d in %s', step, self.ckpt.directory)
      return state, rng
    return fresh_state(self.job, self.mesh)

  def restore_or_init(self) -> tuple[Any, jax.Array, int]:
    state, rng = self.restore_newest()
    first_step = int(state.step)
    if first_step > self.cfg.num_steps:
      log.warning('the checkpoint is at step %d, past num_steps=%d: nothing to train; '
                  'evaluating step %d', first_step, self.cfg.num_steps, first_step)
    if self.main:  # rows after the checkpoint are written again; a finished run re-evaluates
      plumbing.truncate_metrics(self.metrics_path, first_step)
      plumbing.truncate_metrics(self.eval_path, min(first_step, self.cfg.num_steps - 1))
    for row in plumbing.read_rows(self.eval_path):  # the best checkpoint survives a resume
      self.ckpt.note_metrics(row['step'], self.job.upgrade_row(row))
    logged = plumbing.read_rows(self.metrics_path)  # for `finish`, if no step runs now
    self.last_row = logged[-1] if logged else None
    return self.job.start(state, first_step), rng, first_step

  def train(self, state, rng, first_step: int):
    """Steps first_step .. num_steps − 1; returns (state, last step's metrics, the signal
    that stopped the run or None)."""
    cfg, guard = self.cfg, self.guard
    step_fn = jit_train_step(self.job.train_step, self.mesh)
    batches = plumbing.prefetch(
        lambda t: global_batch(self.job.examples, self.job.num_examples, cfg.batch_size,
                               cfg.seed, t, self.mesh), range(first_step, cfg.num_steps))
    last_time, last_step, step_metrics = time.perf_counter(), first_step, None
    for step, batch in zip(range(first_step, cfg.num_steps), batches):
      previous = step_metrics
      state, step_metrics = step_fn(state, batch, rng)
      if step == first_step:
        jax.block_until_ready(step_metrics)
        log.info('compiled and ran the first step in %.1f s', time.perf_counter() - last_time)
      # At most two steps in flight: the device never idles, and XLA:CPU's collectives
      # over many simulated devices cannot starve (their rendezvous times out).
      jax.block_until_ready(previous)
      self.flush()
      done = step + 1
      if done % cfg.log_every == 0 or done == cfg.num_steps:
        now = time.perf_counter()
        self.metrics_log.push(done, step_metrics,
                              (done - last_step) * cfg.batch_size / (now - last_time))
        last_time, last_step = now, done
      self.job.after_step(state, done)
      if done == cfg.num_steps:
        break
      row = self.evaluate(state, done) if done % cfg.eval_every == 0 else None
      if guard.should_stop(done):
        self.flush()  # the row of the step being saved: a resume starts after it
        self.save(state, rng, done, step_metrics, final=True)
        return state, step_metrics, guard.signal_name
      if done % cfg.checkpoint_every == 0:
        self.save(state, rng, done, step_metrics, eval_row=row)
    return state, step_metrics, None

  def flush(self) -> None:
    """Writes the pending metrics row; a non-finite loss in it stops the run."""
    row = self.metrics_log.flush()
    if row is not None:
      self.last_row = row
      plumbing.check_finite(row, self.job.loss_keys, self.last_good)
      self.job.logged(row, self.last_good)

  def last_good(self) -> str | None:
    """The newest complete checkpoint (after the save in flight, if any, has finished)."""
    self.ckpt.wait()
    latest = self.ckpt.latest_step()
    return None if latest is None else f'step {latest} in {self.ckpt.directory}'

  def evaluate(self, state, step: int) -> dict[str, Any] | None:
    row = self.job.evaluate(state, step)
    if row is not None and self.main:
      self.eval_log.append(row)
      self.reporter.evaluated(row)
    return row

  def save(self, state, rng, step: int, step_metrics, *, eval_row=None, final=False):
    """Checkpoint `step` once its losses and its state are known to be finite (this waits
    for the step): nothing non-finite is ever saved. The pending metrics row is written
    first, so a non-finite loss is logged (as null) whichever check finds it."""
    self.flush()
    if step_metrics is not None:
      row = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      plumbing.check_finite({**row, 'step': step}, self.job.loss_keys, self.last_good)
    if not bool(plumbing.all_finite(state)):
      raise plumbing.diverged(f'values in the state after step {step}', self.last_good())
    self.ckpt.save(step, checkpoint_tree(state, rng, step, self.cfg.batch_size),
                   metrics=eval_row, final=final)

  def finish(self, state, rng, step_metrics) -> dict[str, Any]:
    """The final evaluation, eval.json and the job's outputs, then the final checkpoint.
    Results that a full disk kept out get the older checkpoints' space (the newest stays);
    if they still do not fit, the final checkpoint is saved and `ResultsNotWritten` says
    what to free (a rerun resumes at the final step and writes them). Metrics rows still
    kept out: no final checkpoint (a rerun trains the steps since the newest one again)."""
    self.flush()
    step = int(state.step)
    eval_row = self.job.evaluate(state, step)
    if eval_row is not None and self.main:
      self.eval_log.append(eval_row)
    missing = self.write_results(state, eval_row)
    if missing and self.ckpt.delete_older():
      missing = self.write_results(state, eval_row)
    kept_back = [row['step'] for row in self.metrics_log.file.unwritten]
    if kept_back:  # rows no checkpoint can give back: a rerun trains those steps again
      raise ResultsNotWritten(
          f'{", ".join(missing)} could not be written: the disk of {self.workdir} is full. '
          f'The final checkpoint is not saved, since the metrics rows of steps '
          f'{", ".join(map(str, kept_back))} would be lost with it; free some space and rerun '
          f'the same command: it resumes from {self.last_good() or "the start"}')
    self.save(state, rng, step, step_metrics, eval_row=eval_row, final=True)
    if missing:
      raise ResultsNotWritten(
          f'{", ".join(missing)} could not be written: the disk of {self.workdir} is full. '
          f'The final checkpoint (step {step}) is saved; free some space and rerun the same '
          'command: it resumes there and writes the results')
    self.reporter.evaluated(self.results)
    return self.results

  def write_results(self, state, eval_row) -> list[str]:
    """eval.json, the job's outputs and the log rows kept back; returns the paths a full
    disk kept out."""
    missing = [f.path for f in (self.metrics_log.file, self.eval_log)
               if self.main and not f.retry()]
    try:
      self.results = self.job.finish(state, eval_row, self.last_row)
    except disk.OutputNotWritten as e:
      missing.append(str(e))
      self.results = e.results
    path = os.path.join(self.workdir, 'eval.json')
    if self.main and not plumbing.write_json(path, self.results):
      missing.append(path)
    return missing


def load_checkpoint(job: Job, workdir: str, step: int | None = None) -> tuple[Any, jax.Array]:
  """(state, step RNG key) of checkpoint `step` (None: the newest) of the run in `workdir`;
  `ConfigError` when there is none."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):  # Checkpointer would make it
    raise ConfigError(f'no checkpoint in {os.path.abspath(directory)} (found: none); train '
                      'first with the same --workdir')
  ckpt = Checkpointer(directory)
  try:
    steps = ckpt.all_steps()
    step = steps[-1] if step is None and steps else step
    if step is None or step not in steps:
      found = ', '.join(map(str, steps)) or 'none'
      raise ConfigError(f'no checkpoint{"" if step is None else f" {step}"} in {ckpt.directory} '
                        f'(found: {found}); train first with the same --workdir')
    return restore(job, ckpt, step, parallel.make_mesh())
  finally:
    ckpt.close()  # also on error: orbax's background cleanup must end before exit
