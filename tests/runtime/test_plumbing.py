import json
import os
import subprocess

import jax.numpy as jnp
import pytest

from hashjax.runtime import errors
from hashjax.runtime import plumbing as training


def test_prefetch_keeps_order_and_runs_ahead():
  calls = []

  def make(step):
    calls.append(step)
    return step * 10

  out = []
  for value in training.prefetch(make, range(3, 9), depth=2):
    out.append(value)
  assert out == [30, 40, 50, 60, 70, 80] and sorted(calls) == list(range(3, 9))


def test_prefetch_reraises_errors_from_the_worker():
  def make(step):
    if step == 2:
      raise ValueError('bad batch 2')
    return step

  with pytest.raises(ValueError, match='bad batch 2'):
    list(training.prefetch(make, range(5)))


def test_check_finite_names_step_and_checkpoint():
  training.check_finite({'step': 3, 'loss': 1.0}, ('loss',), 'step 2')
  with pytest.raises(errors.DivergedError, match=r'non-finite loss at step 4 \(loss=inf\); '
                                                   r'the last good checkpoint is step 2'):
    training.check_finite({'step': 4, 'loss': float('inf')}, ('loss',), 'step 2')


def test_check_finite_without_a_checkpoint_says_start_again():
  with pytest.raises(errors.DivergedError, match=r'non-finite loss at step 1 \(loss=nan\); no '
                                                   r'checkpoint was saved yet; start again'):
    training.check_finite({'step': 1, 'loss': float('nan')}, ('loss',), None)


def test_all_finite_looks_at_every_float_leaf():
  tree = {'w': jnp.ones(3), 'step': jnp.int32(4), 'b': {'x': jnp.zeros((2, 2), jnp.bfloat16)}}
  assert bool(training.all_finite(tree))
  for bad in (jnp.inf, -jnp.inf, jnp.nan):
    assert not bool(training.all_finite({**tree, 'b': {'x': jnp.full((2, 2), bad, jnp.bfloat16)}}))


def test_a_row_file_keeps_back_what_a_full_disk_refused_and_writes_it_in_order(
    tmp_path, monkeypatch):
  real_append = training.append_or_warn
  full = {'on': True}
  monkeypatch.setattr(training, 'append_or_warn',
                      lambda path, text: False if full['on'] else real_append(path, text))
  rows = training.RowFile(str(tmp_path / 'm.jsonl'))
  assert not rows.append({'step': 1}) and not rows.append({'step': 2})
  assert [r['step'] for r in rows.unwritten] == [1, 2] and not (tmp_path / 'm.jsonl').exists()
  full['on'] = False
  assert rows.append({'step': 3}) and rows.unwritten == []
  assert [r['step'] for r in training.read_rows(str(tmp_path / 'm.jsonl'))] == [1, 2, 3]
  assert rows.retry()


def _rows(steps) -> bytes:
  return b''.join(json.dumps({'step': s, 'loss': 0.5}).encode() + b'\n' for s in steps)


def test_truncate_metrics_cuts_after_the_step_and_at_a_torn_row(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_bytes(_rows([5, 10, 15, 20, 15, 20]))  # rows a failed cut left, written again
  training.truncate_metrics(str(path), 10)
  assert path.read_bytes() == _rows([5, 10])
  path.write_bytes(_rows([5, 10]) + b'{"step": 15, "lo')  # a crash during a row's write
  training.truncate_metrics(str(path), 100)
  assert path.read_bytes() == _rows([5, 10])
  training.truncate_metrics(str(tmp_path / 'none.jsonl'), 3)  # no file: nothing to do
  assert not (tmp_path / 'none.jsonl').exists()


def test_truncate_metrics_works_on_a_full_disk(tmp_path):
  if os.geteuid() != 0 or subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(tmp_path)],
      capture_output=True, check=False).returncode != 0:
    pytest.skip('mounts a tmpfs: needs root')
  try:
    path = tmp_path / 'metrics.jsonl'
    path.write_bytes(_rows(range(1, 2001)))
    with open(tmp_path / 'filler', 'wb', buffering=0) as f:
      with pytest.raises(OSError):
        while True:
          f.write(b'x' * 4096)
    training.truncate_metrics(str(path), 1000)
    assert path.read_bytes() == _rows(range(1, 1001))
  finally:
    subprocess.run(['umount', '-l', str(tmp_path)], check=False)
