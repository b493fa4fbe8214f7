"""hashjax/ops/backend.py: the backend check, its override for tests, the compiler options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from hashjax import ops
from hashjax.ops import backend

DN = ('NHWC', 'HWIO', 'NHWC')


def test_cpu_kernels_follow_the_backend_and_force_portable_turns_them_off():
  assert ops.cpu_kernels() == (jax.default_backend() == 'cpu')
  with ops.force_portable():
    assert not ops.cpu_kernels()
    with ops.force_portable():
      assert not ops.cpu_kernels()
    assert not ops.cpu_kernels()  # nested blocks restore what they found
  assert ops.cpu_kernels() == (jax.default_backend() == 'cpu')


def test_force_portable_is_undone_by_an_exception():
  before = ops.cpu_kernels()
  with pytest.raises(KeyError):
    with ops.force_portable():
      raise KeyError('x')
  assert ops.cpu_kernels() == before


def test_compiler_options_move_convolutions_off_ynnpack():
  with ops.force_portable():
    assert ops.compiler_options() == {}  # nothing to choose off CPU
  if not ops.cpu_kernels():
    assert ops.compiler_options() == {}
    return
  options = ops.compiler_options()
  assert options == {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'}
  options['changed'] = 'by the caller'
  assert 'changed' not in ops.compiler_options()  # a fresh dict each time
  f = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=DN)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 32))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 32))
  hlo = lambda opts: jax.jit(f, compiler_options=opts).lower(x, k).compile().as_text()
  if '__ynn_fusion' not in hlo({}):
    pytest.skip('this jaxlib does not run convolutions on YNNPACK by default')
  assert '__ynn_fusion' not in hlo(ops.compiler_options())
  np.testing.assert_allclose(jax.jit(f, compiler_options=ops.compiler_options())(x, k),
                             f(x, k), rtol=1e-4, atol=1e-4)


def test_compiler_options_fall_back_where_the_jaxlib_rejects_them(monkeypatch, caplog):
  if not ops.cpu_kernels():
    pytest.skip('CPU only')
  monkeypatch.setattr(backend, '_CPU_OPTIONS', {'xla_cpu_experimental_ynn_fusion_type': 'bogus'})
  backend._cpu_accepts_options.cache_clear()
  try:
    with caplog.at_level('WARNING', logger='hashjax.ops.backend'):
      assert ops.compiler_options() == {}
    assert 'does not accept' in caplog.text and 'default kernels' in caplog.text
  finally:
    backend._cpu_accepts_options.cache_clear()
  assert jnp.isfinite(jax.jit(lambda x: x + 1, compiler_options=ops.compiler_options())(1.0))
