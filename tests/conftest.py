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
