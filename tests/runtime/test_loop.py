"""The loop's promises, one test body for every job (`JOBS`): resume bit-identical after
kill -9 and after SIGTERM, a disk that fills up mid-run, the NaN/inf stop, and the best
checkpoint kept through pruning and resumes. Subprocesses only where the process boundary is
the point (signals)."""

import atexit
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import pytest

from configs import dcgan_digits, hashnet_digits
from hashjax.gan import job as gan_trainer
from hashjax.hashing import job, update
from hashjax.hashing import run as hash_trainer
from hashjax.runtime import errors, loop
from hashjax.runtime import plumbing as training
from hashjax.runtime.errors import ConfigError, WorkdirError
from hashjax.runtime.settings import override
from tests import ROOT

# The finished run the 'update' job updates: made once per test process, on first use.
UPDATE_BASE = tempfile.mkdtemp(prefix='hashjax-update-base-')
atexit.register(shutil.rmtree, UPDATE_BASE, ignore_errors=True)
HASHNET_TINY = {'bits': 16, 'batch_size': 32, 'split.query_per_class': 5,
                'split.train_per_class': 20, 'eval_every': 100000, 'log_every': 5}


def _update_config():
  """hashnet_digits, after making sure the base run (digits 0–6, fisher.npz) exists."""
  if not os.path.exists(os.path.join(UPDATE_BASE, 'eval.json')):
    c = override(hashnet_digits.get_config(), {
        **HASHNET_TINY, 'num_steps': 10, 'checkpoint_every': 10, 'save_fisher': True,
        'split.new_classes': '7,8,9', 'split.stage': 'old'})
    hash_trainer.train_and_evaluate(c, UPDATE_BASE)
  return hashnet_digits.get_config()


class JobSpec(NamedTuple):
  script: str  # the CLI that runs this job
  config_file: str
  get_config: Callable[[], Any]
  tiny: dict[str, Any]  # overrides giving a fast run
  diverge: dict[str, Any]  # overrides that make the loss NaN/inf within a few steps
  best: dict[str, Any]  # an evaluated run with a best_metric
  train: Callable[..., dict[str, Any]]
  job: Callable[[Any, str], loop.Job]


JOBS = {
    'hashnet': JobSpec(
        'train.py', 'configs/hashnet_digits.py', hashnet_digits.get_config, HASHNET_TINY,
        {'learning_rate': 1e6}, {'checkpoint.best_metric': 'map@all'},
        hash_trainer.train_and_evaluate, job.HashJob),
    'update': JobSpec(  # the Laplace prior, kept codes and the code anchor: every part
        'train.py', 'configs/hashnet_digits.py', _update_config,
        {**HASHNET_TINY, 'split.new_classes': '7,8,9', 'split.stage': 'new',
         'updating.from_workdir': UPDATE_BASE, 'updating.database_codes': 'keep',
         'updating.code_anchor_weight': 1.0},
        {'learning_rate': 1e6}, {'checkpoint.best_metric': 'map@all'},
        hash_trainer.train_and_evaluate, update.UpdateJob),
    'dcgan': JobSpec(
        'gan.py', 'configs/dcgan_digits.py', dcgan_digits.get_config,
        {'nz': 16, 'ngf': 8, 'ndf': 8, 'batch_size': 16, 'num_samples': 8,
         'eval_holdout': 0, 'sample_every': 100000, 'eval_every': 100000, 'log_every': 5},
        {'learning_rate': 1e30},
        {'checkpoint.best_metric': 'jsd', 'eval_holdout': 64, 'eval_steps': 10},
        gan_trainer.train_and_evaluate, gan_trainer.GanJob),
}

# The jobs of a test whose every job costs much: hashnet in `pytest -q`, the others slow (the
# loop is one code path; .ci/run runs every job).
JOBS_HASHNET_FIRST = [name if name == 'hashnet' else
                      pytest.param(name, marks=pytest.mark.slow) for name in sorted(JOBS)]


def _config(spec: JobSpec, **overrides):
  return override(spec.get_config(), {**spec.tiny, **overrides})


def _cli(spec: JobSpec, workdir, **overrides):
  spec.get_config()  # makes what the job needs first (the update's base run)
  args = [f'--config.{k}={v}' for k, v in {**spec.tiny, **overrides}.items()]
  return subprocess.Popen([sys.executable, os.path.join(ROOT, spec.script),
                           f'--config={os.path.join(ROOT, spec.config_file)}',
                           f'--workdir={workdir}', *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _state(spec: JobSpec, cfg, workdir, step):
  return loop.load_checkpoint(spec.job(cfg, str(workdir)), str(workdir), step)[0]


def _assert_same_state(spec, cfg, workdir_a, workdir_b, step):
  a, b = _state(spec, cfg, workdir_a, step), _state(spec, cfg, workdir_b, step)
  assert int(a.step) == int(b.step) == step
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def _strict_rows(path):
  def no_constant(name):
    raise AssertionError(f'{path} holds {name}, which is not JSON')
  with open(path) as f:
    return [json.loads(line, parse_constant=no_constant) for line in f if line.strip()]


class Recorder(training.SilentReporter):
  def __init__(self):
    self.first_step, self.evals = None, []

  def start(self, total_steps, first_step):
    self.first_step = first_step

  def evaluated(self, results):
    self.evals.append(results)


@pytest.mark.parametrize('name', JOBS_HASHNET_FIRST)
def test_nan_stop_names_the_step_and_the_last_good_checkpoint(tmp_path, name):
  spec = JOBS[name]
  cfg = _config(spec, num_steps=40, checkpoint_every=2, log_every=1, **spec.diverge)
  with pytest.raises(errors.DivergedError) as error:
    spec.train(cfg, str(tmp_path))
  message = str(error.value)
  assert re.match(r'non-finite (loss at step \d+ \(.*=(nan|inf|-inf)\)|values in the state '
                  r'after step \d+); ', message), message
  steps = _steps(tmp_path)
  if steps:
    assert f'the last good checkpoint is step {steps[-1]} in ' in message
  else:
    assert 'no checkpoint was saved yet; start again with a lower learning rate' in message
  for step in steps:  # nothing non-finite was saved
    assert bool(training.all_finite(_state(spec, cfg, tmp_path, step)))
  rows = _strict_rows(tmp_path / 'metrics.jsonl')
  if message.startswith('non-finite loss'):  # (the state check can come before any such row)
    assert any(None in row.values() for row in rows)  # the non-finite row, as null
  assert not (tmp_path / 'eval.json').exists()


@pytest.mark.parametrize('name', JOBS_HASHNET_FIRST)
def test_best_checkpoint_is_kept_through_pruning_and_resume(tmp_path, name):
  spec = JOBS[name]
  settings = dict(eval_every=2, checkpoint_every=2, **{'checkpoint.max_to_keep': 1},
                  **spec.best)
  spec.train(_config(spec, num_steps=6, **settings), str(tmp_path))
  cfg = _config(spec, num_steps=12, **settings)
  spec.train(cfg, str(tmp_path))
  job = spec.job(cfg, str(tmp_path))
  metric = cfg.checkpoint.best_metric
  rows = [r for r in _strict_rows(tmp_path / 'eval.jsonl') if r['step'] > 0]
  assert [r['step'] for r in rows] == [2, 4, 6, 8, 10, 12]
  values = np.array([r[metric] for r in rows])
  assert len(set(values.tolist())) > 1, 'every evaluation gave the same value: nothing to rank'
  pick = np.argmax if job.metric_modes[metric] == 'max' else np.argmin
  best = rows[int(pick(values))]['step']
  assert _steps(tmp_path) == sorted({best, 12})


@pytest.mark.parametrize('name', sorted(JOBS))
def test_best_metric_must_be_a_metric_of_the_job(tmp_path, name):
  spec = JOBS[name]
  with pytest.raises(ConfigError, match=r"checkpoint.best_metric='accuracy' is not a metric of "
                                        r'this job; accepted: '):
    spec.train(_config(spec, **{'checkpoint.best_metric': 'accuracy'}), str(tmp_path))


CHANGED = {'hashnet': {'bits': 32}, 'dcgan': {'nz': 32},  # settings a checkpoint depends on
           'update': {'updating.prior': 'l2'}}


@pytest.mark.parametrize('name', JOBS_HASHNET_FIRST)
def test_resume_with_changed_settings_is_one_line_and_keeps_config_json(tmp_path, name):
  spec = JOBS[name]
  spec.train(_config(spec, num_steps=5, checkpoint_every=5), str(tmp_path))
  before = (tmp_path / 'config.json').read_text()
  (key, value), = CHANGED[name].items()
  with pytest.raises(WorkdirError, match=rf'resuming the run in .* with settings its '
                                         rf'checkpoints were not trained with: {key} '):
    spec.train(_config(spec, num_steps=10, **CHANGED[name]), str(tmp_path))
  assert (tmp_path / 'config.json').read_text() == before
  # Cadence, length and learning rate may change.
  results = spec.train(_config(spec, num_steps=10, log_every=2, learning_rate=1e-4,
                               **{'checkpoint.max_to_keep': 3}), str(tmp_path))
  assert results['step'] == 10
  assert json.load(open(tmp_path / 'config.json'))['learning_rate'] == 1e-4


def _damage(step_dir, how):
  if how in ('truncate', 'flip'):  # the largest data file, cut to half or one byte flipped
    files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
    path = max(files, key=os.path.getsize)
    with open(path, 'r+b') as f:
      if how == 'truncate':
        f.truncate(os.path.getsize(path) // 2)
      else:  # a byte in the middle of the array data: orbax alone restores it silently
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))
    return
  paths = [os.path.join(d, how) for d, _, fs in os.walk(step_dir) if how in fs]
  assert paths, f'no {how} under {step_dir}'
  for path in paths:
    os.remove(path)


@pytest.mark.parametrize('how', ['truncate', 'manifest.ocdbt', '_METADATA', 'flip'])
@pytest.mark.parametrize('name', JOBS_HASHNET_FIRST)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_resumes(
    tmp_path, name, how):
  spec = JOBS[name]
  cfg = _config(spec, num_steps=10, checkpoint_every=5, **{'checkpoint.max_to_keep': 3})
  spec.train(_config(spec, num_steps=10, checkpoint_every=5, **{'checkpoint.max_to_keep': 3}),
             str(tmp_path / 'straight'))
  workdir = tmp_path / 'damaged'
  spec.train(_config(spec, num_steps=8, checkpoint_every=4, **{'checkpoint.max_to_keep': 3}),
             str(workdir))
  assert _steps(workdir) == [4, 8]
  _damage(str(workdir / 'checkpoints' / '8'), how)
  rec, seen = Recorder(), []
  handler = logging.Handler(logging.WARNING)
  handler.emit = lambda record: seen.append(record.getMessage())
  logger = logging.getLogger('hashjax.runtime.loop')  # not via the root: the CLI may stop propagation
  logger.addHandler(handler)
  try:
    spec.train(cfg, str(workdir), reporter=rec)
  finally:
    logger.removeHandler(handler)
  assert rec.first_step == 4
  warnings = [m for m in seen if 'does not restore' in m]
  assert len(warnings) == 1 and warnings[0].startswith('checkpoint 8 does not restore (')
  assert warnings[0].endswith(f'; moved it to {workdir / "checkpoints" / "damaged-8"}; trying '
                              'the one before')
  assert os.path.isdir(workdir / 'checkpoints' / 'damaged-8')  # kept for inspection
  _assert_same_state(spec, cfg, tmp_path / 'straight', workdir, 10)


def test_num_steps_below_the_checkpoint_trains_nothing_and_says_so(tmp_path):
  spec = JOBS['hashnet']
  spec.train(_config(spec, num_steps=10, checkpoint_every=5), str(tmp_path))
  seen = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = lambda record: seen.append(record.getMessage())
  logging.getLogger('hashjax.runtime.loop').addHandler(handler)
  try:
    results = spec.train(_config(spec, num_steps=5, checkpoint_every=5), str(tmp_path))
  finally:
    logging.getLogger('hashjax.runtime.loop').removeHandler(handler)
  assert results['step'] == 10
  assert seen == ['the checkpoint is at step 10, past num_steps=5: nothing to train; '
                  'evaluating step 10']


@pytest.mark.parametrize('fits_after_pruning', [True, False])
@pytest.mark.parametrize('name', JOBS_HASHNET_FIRST)
def test_results_a_full_disk_keeps_out_get_the_older_checkpoints_space(
    tmp_path, name, fits_after_pruning, monkeypatch):
  spec = JOBS[name]
  cfg = _config(spec, num_steps=10, checkpoint_every=2, **{'checkpoint.max_to_keep': 3})
  real_write_json = training.write_json
  failures = {'left': 1 if fits_after_pruning else 2}

  def write_json(path, obj):
    if path.endswith('eval.json') and failures['left']:
      failures['left'] -= 1
      return False  # what write_or_warn answers on a full disk
    return real_write_json(path, obj)

  monkeypatch.setattr(training, 'write_json', write_json)
  if fits_after_pruning:
    results = spec.train(cfg, str(tmp_path))
    assert json.load(open(tmp_path / 'eval.json')) == results and results['step'] == 10
  else:
    with pytest.raises(errors.ResultsNotWritten, match=r'eval.json could not be written: the disk '
                                                     r'of .* is full. The final checkpoint '
                                                     r'\(step 10\) is saved'):
      spec.train(cfg, str(tmp_path))
    assert not (tmp_path / 'eval.json').exists()
    monkeypatch.setattr(training, 'write_json', real_write_json)
    rec = Recorder()
    results = spec.train(cfg, str(tmp_path), reporter=rec)  # resumes at 10, writes them
    assert rec.first_step == 10 and json.load(open(tmp_path / 'eval.json')) == results
    assert results.get('jsd_lower_bound', 0) is not None  # the last logged row, from the file
  assert _steps(tmp_path) == [8, 10]  # 2, 4 and 6 made room; 8 was the newest


@pytest.mark.parametrize('name', JOBS_HASHNET_FIRST)
def test_a_metrics_row_a_full_disk_keeps_out_is_never_lost(tmp_path, name, monkeypatch):
  # Found by benchmarks/fault_injection.py: the last metrics row, kept out by a full disk,
  # was gone, and the GAN's eval.json (its bound comes from that row) differed on resume.
  spec = JOBS[name]
  cfg = _config(spec, num_steps=10, checkpoint_every=4)
  straight = spec.train(cfg, str(tmp_path / 'straight'))
  real_append = training.append_or_warn
  failing = {'on': True}

  def append(path, text):
    if path.endswith('metrics.jsonl') and '"step": 10' in text and failing['on']:
      return False  # what append_or_warn answers on a full disk
    return real_append(path, text)

  monkeypatch.setattr(training, 'append_or_warn', append)
  workdir = tmp_path / 'full'
  with pytest.raises(errors.ResultsNotWritten, match=r'metrics.jsonl could not be written: .*'
                     r'The final checkpoint is not saved, since the metrics rows of steps 10 '
                     r'would be lost with it; .* it resumes from step 8 in '):
    spec.train(cfg, str(workdir))
  assert _steps(workdir) == [8]
  failing['on'] = False
  again = spec.train(cfg, str(workdir))
  paths = ('samples',)  # the GAN's grid: the same picture in another workdir
  assert {k: v for k, v in again.items() if k not in paths} == {
      k: v for k, v in straight.items() if k not in paths}
  rows = [r['step'] for r in _strict_rows(workdir / 'metrics.jsonl')]
  assert rows == [r['step'] for r in _strict_rows(tmp_path / 'straight' / 'metrics.jsonl')]
