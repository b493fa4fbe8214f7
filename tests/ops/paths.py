"""Test helpers for code with two paths (`hashjax.ops`): the CPU kernels and the portable ops
other backends run."""

import contextlib

import jax
import pytest

from hashjax import ops


def on_path(path):
  """A context tracing the CPU kernels ('cpu') or the other backends' ops ('portable')."""
  if path == 'portable':
    return ops.force_portable()
  if not ops.cpu_kernels():
    pytest.skip('the CPU kernels run on an XLA:CPU backend only')
  return contextlib.nullcontext()


def jaxpr(f, *args) -> str:
  """The jaxpr of a fresh function: `make_jaxpr` caches traces by function, not by path."""
  return str(jax.make_jaxpr(lambda *a: f(*a))(*args))
