"""hashjax/ops/conv.py: the matmul kernel gradient equals XLA's convolution gradient, and both
paths of `conv_general_dilated` / `Conv` compute lax's values and gradients."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from hashjax import ops
from tests.ops.paths import jaxpr, on_path

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
  ours = jax.jit(lambda x, dy: ops.kernel_gradient(x, dy, k_shape[:2], strides, pads))
  np.testing.assert_allclose(ours(x, dy), vjp(dy)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('x_shape,k_shape,strides,padding', SHAPES)
def test_cpu_path_values_and_gradients_equal_lax(x_shape, k_shape, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape)
  ours = lambda x, k: ops.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN)
  ref = lambda x, k: lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  value_and_grads = lambda f: jax.jit(lambda x, k: (f(x, k), jax.grad(
      loss(f), argnums=(0, 1))(x, k)))(x, k)  # one program each
  with on_path('cpu'):  # the portable path is lax.conv_general_dilated itself
    y, grads = value_and_grads(ours)
  y_ref, grads_ref = value_and_grads(ref)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(grads, grads_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_only_1x1_kernels_on_cpu_take_the_matmul_kernel_gradient():
  x = jnp.ones((1, 6, 6, 4))
  conv = lambda x, k: ops.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=DN)
  with ops.force_portable():
    assert 'custom_vjp' not in jaxpr(conv, x, jnp.ones((1, 1, 4, 8)))
  with on_path('cpu'):
    assert 'custom_vjp' in jaxpr(conv, x, jnp.ones((1, 1, 4, 8)))
    assert 'custom_vjp' not in jaxpr(conv, x, jnp.ones((3, 3, 4, 8)))


def test_grouped_convolutions_fall_back_to_lax():
  x = jnp.ones((1, 4, 4, 4))
  k = jnp.ones((3, 3, 2, 4))
  y = ops.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=DN,
                               feature_group_count=2)
  np.testing.assert_array_equal(y, lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=DN, feature_group_count=2))


def test_conv_layer_is_nn_conv_on_both_paths():
  """ResNet's 1×1 downsampling layer: the parameters of nn.Conv, and the same values and
  gradients on the CPU path (matmul kernel gradient) as on the portable one (nn.Conv's)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 4))
  ours, ref = ops.Conv(6, (1, 1), (2, 2), use_bias=False), nn.Conv(6, (1, 1), (2, 2),
                                                                 use_bias=False)
  variables = jax.jit(ref.init)(jax.random.PRNGKey(1), x)
  loss = lambda v, x: jnp.sum(jnp.sin(ours.apply(v, x)))
  results = {}
  for path in ('cpu', 'portable'):
    with on_path(path):
      assert jax.tree.map(jnp.shape, jax.eval_shape(ours.init, jax.random.PRNGKey(2), x)) == (
          jax.tree.map(jnp.shape, variables))
      value, grads = jax.jit(lambda v, x: (ours.apply(v, x), jax.grad(loss, argnums=(0, 1))(
          v, x)))(variables, x)  # a fresh trace per path: one program each
      results[path] = (value, grads, jaxpr(ours.apply, variables, x))
  assert 'custom_vjp' in results['cpu'][2] and 'custom_vjp' not in results['portable'][2]
  for a, b in zip(jax.tree.leaves(results['cpu'][:2]), jax.tree.leaves(results['portable'][:2])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
