"""The loop's promises, one test body for every job (`JOBS`): resume bit-identical after
kill -9 and after SIGTERM, a disk that fills up mid-run, the NaN/inf stop, and the best
checkpoint kept through pruning and resumes. Subprocesses only where the process boundary is
the point (signals)."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import pytest

from configs import dcgan_digits, hashnet_digits
from hashjax import checkpoint as ckpt_lib
from hashjax import gan_trainer, hash_trainer, loop, training
from hashjax.checkpoint import CheckpointError
from hashjax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        'train.py', 'configs/hashnet_digits.py', hashnet_digits.get_config,
        {'bits': 16, 'batch_size': 32, 'split.query_per_class': 5,
         'split.train_per_class': 20, 'eval_every': 100000, 'log_every': 5},
        {'learning_rate': 1e6}, {'checkpoint.best_metric': 'map'},
        hash_trainer.train_and_evaluate, hash_trainer.HashJob),
    'dcgan': JobSpec(
        'gan.py', 'configs/dcgan_digits.py', dcgan_digits.get_config,
        {'nz': 16, 'ngf': 8, 'ndf': 8, 'batch_size': 16, 'num_samples': 8,
         'eval_holdout': 0, 'sample_every': 100000, 'eval_every': 100000, 'log_every': 5},
        {'learning_rate': 1e30},
        {'checkpoint.best_metric': 'jsd', 'eval_holdout': 64, 'eval_steps': 10},
        gan_trainer.train_and_evaluate, gan_trainer.GanJob),
}


def _config(spec: JobSpec, **overrides):
  c = spec.get_config()
  for key, value in {**spec.tiny, **overrides}.items():
    obj = c
    *path, last = key.split('.')
    for part in path:
      obj = obj[part]
    obj[last] = value
  return c


def _cli(spec: JobSpec, workdir, **overrides):
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


LONG = {'num_steps': 240, 'checkpoint_every': 3}


@pytest.fixture(scope='module', params=sorted(JOBS))
def uninterrupted(request, tmp_path_factory):
  spec = JOBS[request.param]
  workdir = str(tmp_path_factory.mktemp(f'straight_{request.param}'))
  cfg = _config(spec, **LONG)
  return spec, cfg, workdir, spec.train(cfg, workdir)


def _wait_for_rows(proc, path, before, seconds=120):
  deadline = time.time() + seconds
  size = lambda: os.path.getsize(path) if os.path.exists(path) else 0
  while time.time() < deadline and size() == before and proc.poll() is None:
    time.sleep(0.02)


def test_kill_9_at_random_moments_always_resumes_bit_identically(tmp_path, uninterrupted):
  spec, cfg, straight, straight_results = uninterrupted
  workdir = str(tmp_path / 'killed')
  metrics = os.path.join(workdir, 'metrics.jsonl')
  rng = random.Random(1234)
  for trial in range(3):
    before = set(_steps(workdir)) if trial else set()
    proc = _cli(spec, workdir, **LONG)
    _wait_for_rows(proc, metrics, os.path.getsize(metrics) if os.path.exists(metrics) else 0)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, 'the run ended before it was killed'
    if trial:  # every restart resumes from a checkpoint that was complete on disk
      match = re.search(r'resuming from checkpoint step (\d+)', err)
      assert match is not None and int(match.group(1)) in before, err[-2000:]
  proc = _cli(spec, workdir, **LONG)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  assert json.load(open(os.path.join(workdir, 'eval.json'))) == {
      **straight_results, **({'samples': os.path.join(workdir, 'samples', 'step_000240.png')}
                             if 'samples' in straight_results else {})}
  _assert_same_state(spec, cfg, straight, workdir, 240)


def test_sigterm_saves_exits_0_and_resumes_bit_identically(tmp_path, uninterrupted):
  spec, cfg, straight, _ = uninterrupted
  workdir = str(tmp_path / 'term')
  proc = _cli(spec, workdir, num_steps=240, checkpoint_every=1000)
  _wait_for_rows(proc, os.path.join(workdir, 'metrics.jsonl'), 0)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  saved = re.search(r'SIGTERM received: saved step (\d+)', err)
  assert saved, err[-2000:]
  step = int(saved.group(1))
  assert 0 < step < 240 and _steps(workdir) == [step]
  spec.train(cfg, workdir)
  _assert_same_state(spec, cfg, straight, workdir, 240)


def test_disk_full_mid_run_keeps_results_and_resumes_bit_identically(tmp_path, uninterrupted,
                                                                     monkeypatch):
  spec, cfg, straight, straight_results = uninterrupted
  workdir = str(tmp_path / 'full')
  full = {'on': False}
  real_free_bytes = ckpt_lib.free_bytes
  monkeypatch.setattr(ckpt_lib, 'free_bytes', lambda path: 0 if full['on'] else real_free_bytes(path))

  class FillAt100(training.SilentReporter):
    def log(self, row):
      full['on'] = full['on'] or row['step'] >= 100

  with pytest.raises(CheckpointError, match='the final checkpoint .* could not be written'):
    spec.train(cfg, workdir, reporter=FillAt100())
  rows = _strict_rows(os.path.join(workdir, 'metrics.jsonl'))
  assert rows[-1]['step'] == 240 and rows[-1]['checkpoint_skipped'] > 0
  last = _steps(workdir)[-1]
  assert 96 <= last < 240  # checkpoints stopped once the disk was full; none was lost
  results = json.load(open(os.path.join(workdir, 'eval.json')))  # written before the save
  assert results['step'] == 240
  full['on'] = False
  rec = Recorder()
  spec.train(cfg, workdir, reporter=rec)
  assert rec.first_step == last
  _assert_same_state(spec, cfg, straight, workdir, 240)


class Recorder(training.SilentReporter):
  def __init__(self):
    self.first_step, self.evals = None, []

  def start(self, total_steps, first_step):
    self.first_step = first_step

  def evaluated(self, results):
    self.evals.append(results)


@pytest.mark.parametrize('name', sorted(JOBS))
def test_nan_stop_names_the_step_and_the_last_good_checkpoint(tmp_path, name):
  spec = JOBS[name]
  cfg = _config(spec, num_steps=40, checkpoint_every=2, log_every=1, **spec.diverge)
  with pytest.raises(training.DivergedError) as error:
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
  assert any(None in row.values() for row in rows)  # the non-finite row, as null
  assert not (tmp_path / 'eval.json').exists()


@pytest.mark.parametrize('name', sorted(JOBS))
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
