"""Test setup: the repository root on sys.path (for `configs`), and JAX's persistent
compilation cache for the whole suite.

Many tests build the same programs (a tiny train step, its init, the evaluation), in this
process, in pytest-xdist workers and in the subprocesses of the CLI tests. XLA:CPU compiles
them slowly (a tiny DCGAN init + step: ~17 s), so the suite shares compiled executables
through the cache (keyed by the program, the device set and the JAX version; a changed
program compiles anew). Set JAX_COMPILATION_CACHE_DIR to use another directory.
"""

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Before anything imports jax; subprocesses inherit the environment.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), f'hashjax-tests-jax-cache-{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(2 * 1024**3))  # LRU beyond 2 GiB

import shutil  # noqa: E402

import filelock  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope='session')
def served_run(tmp_path_factory):
  """A finished tiny HashNet run (digits, 16 bits, 150 steps), trained once per test session
  and shared by the pytest-xdist workers (a file lock); tests copy it before changing it."""
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base
  path = root / 'served_run'
  with filelock.FileLock(str(root / 'served_run.lock')):
    if not (path / 'codes.npz').exists():
      from configs import hashnet_digits  # pylint: disable=g-import-not-at-top
      from hashjax.hashing import run as hash_trainer  # pylint: disable=g-import-not-at-top
      from hashjax.runtime.settings import override  # pylint: disable=g-import-not-at-top
      cfg = override(hashnet_digits.get_config(), {
          'bits': 16, 'num_steps': 150, 'split.query_per_class': 5, 'eval_every': 100000,
          'log_every': 50, 'checkpoint_every': 150})
      for stale in (path, root / 'served_run.tmp'):
        shutil.rmtree(stale, ignore_errors=True)
      hash_trainer.train_and_evaluate(cfg, str(root / 'served_run.tmp'))
      os.rename(root / 'served_run.tmp', path)
  return str(path)
