"""train.py as a user runs it: one-line errors with exit code 2, and a tiny real run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.num_steps=4', '--config.log_every=2', '--config.eval_every=4',
        '--config.checkpoint_every=4', '--config.bits=8', '--config.split.query_per_class=3',
        '--config.split.train_per_class=5', '--config.batch_size=16']


def _train(*args, cwd=ROOT):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_tiny_run_prints_metrics_and_writes_workdir(tmp_path):
  proc = _train(f'--workdir={tmp_path}', *TINY)
  assert proc.returncode == 0, proc.stderr
  assert 'eval: step=4 map=' in proc.stdout + proc.stderr
  assert json.loads((tmp_path / 'eval.json').read_text())['step'] == 4
  assert json.loads((tmp_path / 'config.json').read_text())['bits'] == 8


def test_default_workdir_is_runs_config_name(tmp_path):
  proc = _train(*TINY, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / 'runs' / 'hashnet_digits' / 'eval.json').exists()


@pytest.fixture(scope='module')
def bad_npz(tmp_path_factory):
  path = tmp_path_factory.mktemp('npz') / 'bad.npz'
  np.savez(path, image=np.zeros((4, 8, 8), np.float32), label=np.zeros(4, np.int64))
  return str(path)


@pytest.mark.parametrize('args,message', [
    (['--config.bitz=48'], "unknown config key 'bitz'"),
    (['--config.bits=4'], 'bits=4 is out of range; accepted: integers 8..1024'),
    (['--config.bits=abc'], "--config.bits=abc"),
    (['--config=no/such/config.py'], "config file 'no/such/config.py' does not exist"),
    (['--config.split.query_per_class=500'], 'query_per_class=500 is impossible'),
    (['--config.dataset=npz:/no/such.npz'], "npz file '/no/such.npz' does not exist"),
    (['--config.dataset=tfds:smallnorb'], 'tfds build smallnorb'),
    (['--no_such_flag=1'], "Unknown command line flag 'no_such_flag'"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
  proc = _train(f'--workdir={tmp_path}', *args)
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('train.py: error: ') and message in last, proc.stderr


def test_malformed_npz_exit_2(tmp_path, bad_npz):
  proc = _train(f'--workdir={tmp_path}', f'--config.dataset=npz:{bad_npz}')
  assert proc.returncode == 2 and 'image must be uint8' in proc.stderr
  assert 'Traceback' not in proc.stderr
