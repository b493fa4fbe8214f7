"""The one backend check: where the models run this package's XLA:CPU kernels.

`cpu_kernels()` is read at trace time, in the layers' `__call__`; a jitted function keeps the
path it was traced with. `force_portable()` lets a test trace the other path on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Iterator

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

_portable_forced = False

# YNNPACK keeps the reductions; convolutions and dots go to Eigen, faster for these models'
# train steps on XLA:CPU (figures: docs/PERFORMANCE.md).
_CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'}


def cpu_kernels() -> bool:
  """True when the default backend is XLA:CPU and no `force_portable()` is active."""
  return not _portable_forced and jax.default_backend() == 'cpu'


@contextlib.contextmanager
def force_portable() -> Iterator[None]:
  """Within the block, `cpu_kernels()` is False: functions traced here take the path of other
  backends (flax's and lax's own ops). For tests; re-entrant. A function already traced by
  `jax.jit` or `jax.make_jaxpr` keeps its cached trace: trace a fresh one."""
  global _portable_forced
  before, _portable_forced = _portable_forced, True
  try:
    yield
  finally:
    _portable_forced = before


@functools.lru_cache(maxsize=None)
def _cpu_accepts_options() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(jnp.float32(0)).compile()
  except RuntimeError as e:  # jax.errors.JaxRuntimeError (XlaRuntimeError in older jaxlibs)
    log.warning('XLA:CPU does not accept %s (%s); using its default kernels', _CPU_OPTIONS,
                str(e).splitlines()[0])
    return False
  return True


def compiler_options() -> dict[str, str]:
  """`jax.jit(..., compiler_options=...)` for the train steps: with `cpu_kernels()`,
  convolutions and dots on Eigen instead of YNNPACK; `{}` elsewhere, and on a jaxlib that
  does not know the option (logged once)."""
  if not cpu_kernels() or not _cpu_accepts_options():
    return {}
  return dict(_CPU_OPTIONS)
