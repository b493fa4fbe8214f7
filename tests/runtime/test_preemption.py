import os
import signal
import subprocess
import sys

import pytest

from hashjax.runtime.preemption import PreemptionGuard
from tests import ROOT


def test_a_request_made_to_an_enclosing_guard_reaches_the_inner_one():
  with PreemptionGuard() as outer:
    os.kill(os.getpid(), signal.SIGTERM)
    assert outer.should_stop(0) and outer.signal_name == 'SIGTERM'
    with PreemptionGuard() as inner:
      assert inner.should_stop(0) and inner.signal_name == 'SIGTERM'
    with PreemptionGuard() as later:  # each inner guard starts from the enclosing request
      assert later.should_stop(3)
  with PreemptionGuard() as fresh:
    assert not fresh.should_stop(0)


def test_old_handlers_come_back_on_exit():
  before = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard():
    assert signal.getsignal(signal.SIGTERM) is not before
  assert signal.getsignal(signal.SIGTERM) is before


def test_a_request_kept_by_a_plain_handler_before_any_guard_is_taken_over():
  def early(signum, _):
    early.signal_name = signal.Signals(signum).name
  before = signal.signal(signal.SIGTERM, early)
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    with PreemptionGuard() as guard:
      assert guard.should_stop(0) and guard.signal_name == 'SIGTERM'
  finally:
    signal.signal(signal.SIGTERM, before)


_TERM_AT_FIRST_IMPORT = '''
import os, runpy, signal, sys
class TermAtImport:  # SIGTERM exactly when the script starts its imports (seconds of them)
  def find_spec(self, name, path=None, target=None):
    if name == 'absl':
      sys.meta_path.remove(self)
      os.kill(os.getpid(), signal.SIGTERM)
    return None
sys.meta_path.insert(0, TermAtImport())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


# Small models: what happens before step 0 (data, model, state) is the same code at any size.
TINY = {'train.py': ['--config.bits=16', '--config.split.train_per_class=20'],
        'gan.py': ['--config.nz=16', '--config.ngf=8', '--config.ndf=8',
                   '--config.batch_size=16', '--config.num_samples=8']}


@pytest.mark.parametrize('script', ['train.py', 'gan.py'])
def test_a_sigterm_while_the_cli_imports_its_modules_stops_the_job_cleanly(tmp_path, script):
  workdir = tmp_path / 'run'
  proc = subprocess.run(
      [sys.executable, '-c', _TERM_AT_FIRST_IMPORT, os.path.join(ROOT, script),
       f'--workdir={workdir}', '--config.num_steps=5', *TINY[script]],
      capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-2000:]  # was -15: killed
  assert 'SIGTERM received before step 0' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(workdir / 'checkpoints' / '5')
  assert not os.path.exists(workdir / 'eval.jsonl')  # no evaluation at step 0 (gan.py's)


_RUN_AND_REPORT = '''
import runpy, signal, sys
sys.argv = [sys.argv[1], '--help']
try:
  runpy.run_path(sys.argv[0], run_name='__main__')
except SystemExit as e:
  print(e.code, signal.getsignal(signal.SIGTERM) is signal.SIG_IGN,
        signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
'''


@pytest.mark.parametrize('script', ['train.py', 'gan.py'])
def test_after_the_job_the_cli_ignores_sigterm_while_python_shuts_down(script):
  # Found by benchmarks/fault_injection.py: a SIGTERM in the moments Python takes to shut
  # down (it restores the default, fatal handlers first) killed a job that had finished.
  proc = subprocess.run([sys.executable, '-c', _RUN_AND_REPORT, os.path.join(ROOT, script)],
                        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
  assert proc.stdout.split()[-3:] == ['0', 'True', 'True'], proc.stderr[-2000:]
