"""The loop's resume promises, for every job of tests/runtime/test_loop.py (`JOBS`: hashnet in
`pytest -q`, the others in `pytest -m slow`), against one uninterrupted run each: kill -9 and
SIGTERM at random moments and a disk that fills up mid-run all end bit-identical; a signal
before the first step saves nothing; a second run on a held workdir stops at once. A module
of its own so that pytest-xdist (--dist loadscope) runs it beside test_loop.py."""

import json
import os
import random
import re
import signal
import time

import pytest

from hashjax.runtime import checkpoint as ckpt_lib
from hashjax.runtime import plumbing as training
from hashjax.runtime.errors import CheckpointError, WorkdirError
from tests.runtime.test_loop import (
  JOBS,
  JOBS_HASHNET_FIRST,
  _assert_same_state,
  _cli,
  _config,
  _steps,
  _strict_rows,
)

STEPS, FULL_AT = 120, 60  # a run's length; the step from which the disk is full
LONG = {'num_steps': STEPS, 'checkpoint_every': 6}


@pytest.fixture(scope='module', params=JOBS_HASHNET_FIRST)
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
      **straight_results, **({'samples': os.path.join(workdir, 'samples', f'step_{STEPS:06d}.png')}
                             if 'samples' in straight_results else {})}
  _assert_same_state(spec, cfg, straight, workdir, STEPS)


def test_sigterm_saves_exits_0_and_resumes_bit_identically(tmp_path, uninterrupted):
  spec, cfg, straight, _ = uninterrupted
  workdir = str(tmp_path / 'term')
  proc = _cli(spec, workdir, num_steps=STEPS, checkpoint_every=1000)
  _wait_for_rows(proc, os.path.join(workdir, 'metrics.jsonl'), 0)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  saved = re.search(r'SIGTERM received: saved step (\d+)', err)
  assert saved, err[-2000:]
  step = int(saved.group(1))
  assert 0 < step < STEPS and _steps(workdir) == [step]
  spec.train(cfg, workdir)
  _assert_same_state(spec, cfg, straight, workdir, STEPS)
  logged = lambda d: [r['step'] for r in _strict_rows(os.path.join(d, 'metrics.jsonl'))]
  assert logged(workdir) == logged(straight)  # every row once, the stopped step's too


def _fill_disk_at(step, monkeypatch, writes_fail):
  """From `step` on, the checkpoint directory has no free space (and, with `writes_fail`,
  every checkpoint write fails as on a full disk); returns a reporter that flips it and the
  switch."""
  full = {'on': False}
  real_free_bytes, real_write = ckpt_lib.free_bytes, ckpt_lib.Checkpointer._write
  monkeypatch.setattr(ckpt_lib, 'free_bytes',
                      lambda path: 0 if full['on'] else real_free_bytes(path))
  if writes_fail:
    monkeypatch.setattr(ckpt_lib.Checkpointer, '_write', lambda self, *args, **kwargs: (
        '[Errno 28] No space left on device' if full['on'] else real_write(self, *args, **kwargs)))

  class Fill(training.SilentReporter):
    def log(self, row):
      full['on'] = full['on'] or row['step'] >= step

  return Fill(), full


def test_disk_full_mid_run_skips_saves_and_still_writes_the_final_checkpoint(
    tmp_path, uninterrupted, monkeypatch):
  spec, cfg, straight, straight_results = uninterrupted
  workdir = str(tmp_path / 'full')
  reporter, _ = _fill_disk_at(FULL_AT, monkeypatch, writes_fail=False)
  results = spec.train(cfg, workdir, reporter=reporter)
  rows = _strict_rows(os.path.join(workdir, 'metrics.jsonl'))
  assert rows[-1]['step'] == STEPS and rows[-1]['checkpoint_skipped'] > 0
  steps = _steps(workdir)
  # only the estimate said no at the end
  assert steps[-1] == STEPS and FULL_AT - LONG['checkpoint_every'] - 1 <= steps[-2] < STEPS
  assert results['step'] == STEPS
  _assert_same_state(spec, cfg, straight, workdir, STEPS)


def test_final_write_that_fails_keeps_the_results_and_a_rerun_ends_bit_identically(
    tmp_path, uninterrupted, monkeypatch):
  spec, cfg, straight, straight_results = uninterrupted
  workdir = str(tmp_path / 'full')
  reporter, full = _fill_disk_at(FULL_AT, monkeypatch, writes_fail=True)
  with pytest.raises(CheckpointError, match=rf'the final checkpoint \(step {STEPS}\) could not '
                                            r'be written .*The results files are written'):
    spec.train(cfg, workdir, reporter=reporter)
  results = json.load(open(os.path.join(workdir, 'eval.json')))  # written before the save
  assert results['step'] == STEPS
  full['on'] = False
  spec.train(cfg, workdir)
  assert json.load(open(os.path.join(workdir, 'eval.json'))) == results
  _assert_same_state(spec, cfg, straight, workdir, STEPS)


def _wait_for(proc, pattern, seconds=120):
  """Reads proc's stderr until a line matches; returns the lines read."""
  lines, deadline = [], time.time() + seconds
  while time.time() < deadline:
    line = proc.stderr.readline()
    if not line:
      break
    lines.append(line)
    if re.search(pattern, line):
      return lines
  raise AssertionError(f'{pattern!r} never appeared: {"".join(lines)[-2000:]}')


@pytest.mark.parametrize('name', JOBS_HASHNET_FIRST)
def test_sigterm_before_the_first_step_exits_0_and_saves_nothing(tmp_path, name):
  spec = JOBS[name]
  proc = _cli(spec, tmp_path, num_steps=STEPS)
  _wait_for(proc, r'checkpoints in ')  # the loop holds the workdir: the step is compiling
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert 'SIGTERM received before step 0: nothing new to save; rerun to resume' in err
  assert _steps(tmp_path) == []


@pytest.mark.parametrize('name', JOBS_HASHNET_FIRST)
def test_a_second_run_on_a_held_workdir_stops_at_once_naming_the_first(tmp_path, name):
  spec = JOBS[name]
  proc = _cli(spec, tmp_path, num_steps=100000, checkpoint_every=1000)
  try:
    _wait_for(proc, r'compiled and ran the first step')
    with pytest.raises(WorkdirError, match=rf"--workdir '{tmp_path}' is in use by process "
                                           rf'{proc.pid} on .*; wait for that run to end'):
      spec.train(_config(spec, num_steps=10), str(tmp_path))
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
  assert not [n for n in os.listdir(tmp_path / 'checkpoints') if 'tmp' in n]


