"""hashjax.models.conv: the matmul kernel gradient equals XLA's convolution gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from hashjax.models import conv
from hashjax.models.conv import conv_general_dilated

DN = ('NHWC', 'HWIO', 'NHWC')


SHAPES = [
    ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), 'SAME'),       # small_cnn
    ((2, 23, 23, 3), (11, 11, 3, 5), (4, 4), ((2, 2), (2, 2))),  # AlexNet's first layer
    ((2, 9, 9, 4), (7, 7, 4, 3), (2, 2), ((3, 3), (3, 3))),      # ResNet's stem, odd size
    ((2, 6, 6, 4), (1, 1, 4, 6), (2, 2), 'VALID'),      # ResNet downsample
    ((2, 5, 5, 4), (1, 1, 4, 6), (1, 1), 'VALID'),      # 1×1: the input is its own im2col
    ((2, 5, 5, 4), (1, 1, 4, 6), (1, 1), ((1, 0), (0, 1))),  # 1×1 with (odd) padding
]


@pytest.mark.parametrize('x_shape,k_shape,strides,padding', SHAPES)
def test_kernel_gradient_equals_xlas(x_shape, k_shape, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape)
  conv_k = lambda k: lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN)
  y, vjp = jax.vjp(conv_k, k)
  dy = jax.random.normal(jax.random.PRNGKey(2), y.shape)
  pads = lax.padtype_to_pads(x_shape[1:3], k_shape[:2], strides, padding) \
      if isinstance(padding, str) else padding
  np.testing.assert_allclose(conv.kernel_gradient(x, dy, k_shape[:2], strides, pads),
                             vjp(dy)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('x_shape,k_shape,strides,padding', SHAPES)
def test_value_and_gradients_equal_lax(x_shape, k_shape, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape)
  ours = lambda x, k: conv_general_dilated(x, k, strides, padding, dimension_numbers=DN)
  ref = lambda x, k: lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN)
  np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  for a, b in zip(jax.grad(loss(ours), argnums=(0, 1))(x, k),
                  jax.grad(loss(ref), argnums=(0, 1))(x, k)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_only_1x1_kernels_take_the_matmul_kernel_gradient():
  if jax.default_backend() != 'cpu':
    pytest.skip('CPU only')
  x = jnp.ones((1, 6, 6, 4))
  jaxpr = lambda k: str(jax.make_jaxpr(
      lambda x, k: conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=DN))(x, k))
  assert 'custom_vjp' in jaxpr(jnp.ones((1, 1, 4, 8)))
  assert 'custom_vjp' not in jaxpr(jnp.ones((3, 3, 4, 8)))


def test_grouped_convolutions_fall_back_to_lax():
  x = jnp.ones((1, 4, 4, 4))
  k = jnp.ones((3, 3, 2, 4))
  y = conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=DN, feature_group_count=2)
  np.testing.assert_array_equal(y, lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=DN, feature_group_count=2))


def test_cpu_compiler_options_move_convolutions_off_ynnpack():
  options = conv.cpu_compiler_options()
  if jax.default_backend() != 'cpu':  # nothing to choose off CPU
    assert options is None
    return
  assert options == {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'}
  f = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=DN)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 32))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 32))
  hlo = lambda opts: jax.jit(f, compiler_options=opts).lower(x, k).compile().as_text()
  if '__ynn_fusion' not in hlo(None):
    pytest.skip('this jaxlib does not run convolutions on YNNPACK by default')
  assert '__ynn_fusion' not in hlo(options)
  np.testing.assert_allclose(jax.jit(f, compiler_options=options)(x, k), f(x, k),
                             rtol=1e-4, atol=1e-4)


def test_cpu_compiler_options_fall_back_where_the_jaxlib_rejects_them(monkeypatch, caplog):
  if jax.default_backend() != 'cpu':
    pytest.skip('CPU only')
  monkeypatch.setattr(conv, '_CPU_OPTIONS', {'xla_cpu_experimental_ynn_fusion_type': 'bogus'})
  conv._cpu_accepts_options.cache_clear()
  try:
    with caplog.at_level('WARNING', logger='hashjax.models.conv'):
      assert conv.cpu_compiler_options() is None
    assert 'does not accept' in caplog.text and 'default kernels' in caplog.text
  finally:
    conv._cpu_accepts_options.cache_clear()
