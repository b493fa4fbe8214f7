"""hashjax/ops/strided.py: DCGAN's stride-2 4×4 convolutions, the XLA:CPU kernels and the
portable path, against flax's nn.Conv / nn.ConvTranspose (values and both gradients)."""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hashjax import ops

UP = (lambda f: nn.ConvTranspose(f, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                                 use_bias=False),
      ops.conv_transpose_4x4_s2, ops.strided_conv_transpose, 2.0)
DOWN = (lambda f: nn.Conv(f, (4, 4), strides=(2, 2), padding=1, use_bias=False),
        ops.conv_4x4_s2, ops.strided_conv, 0.5)
LAYERS = [  # (reference, kernel, layer, scale), x shape, output features
    (UP, (2, 4, 4, 3), 5), (UP, (1, 8, 6, 16), 8), (UP, (3, 1, 1, 2), 1),
    (UP, (2, 10, 8, 6), 32),  # four-phase convolution (≥ 8 px, ≥ 32 features)
    (DOWN, (2, 8, 8, 3), 5), (DOWN, (1, 4, 6, 16), 8), (DOWN, (3, 2, 2, 2), 1),
    (DOWN, (1, 16, 18, 32), 4)]  # its input gradient takes the four-phase path


def _jaxpr(f, *args) -> str:
  """The jaxpr of a fresh function: `make_jaxpr` caches traces by function, not by path."""
  return str(jax.make_jaxpr(lambda *a: f(*a))(*args))


def _value_and_grads(f, x, kernel):
  """One jitted program, traced afresh (jit caches traces by function, not by path)."""
  return jax.jit(lambda x, k: jax.value_and_grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))),
                                                 argnums=(0, 1))(x, k))(x, kernel)


def _inputs(shape, features):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  kernel = 0.3 * jax.random.normal(jax.random.PRNGKey(1), (4, 4, shape[-1], features))
  return x, kernel


@pytest.mark.parametrize('layers,shape,features', LAYERS)
def test_cpu_kernels_equal_flax_layers_with_the_same_kernel(layers, shape, features):
  make_reference, kernel_fn, _, scale = layers
  x, kernel = _inputs(shape, features)
  reference = make_reference(features)
  flax_fn = lambda x, k: reference.apply({'params': {'kernel': k}}, x)
  y = jax.jit(kernel_fn)(x, kernel)
  assert y.shape == (shape[0], int(scale * shape[1]), int(scale * shape[2]), features)
  np.testing.assert_allclose(y, jax.jit(flax_fn)(x, kernel), atol=2e-6)
  # The hand-written backward passes give autodiff's gradients for the input and the kernel.
  for a, b in zip(_value_and_grads(kernel_fn, x, kernel)[1],
                  _value_and_grads(flax_fn, x, kernel)[1]):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)  # float32 sums of ~100 terms


@pytest.mark.parametrize('layers,shape,features', LAYERS)
def test_both_paths_give_the_same_values_and_gradients(layers, shape, features):
  if not ops.cpu_kernels():
    pytest.skip('the CPU kernels run on an XLA:CPU backend only')
  layer = layers[2]
  x, kernel = _inputs(shape, features)
  cpu, cpu_jaxpr = _value_and_grads(layer, x, kernel), _jaxpr(layer, x, kernel)
  with ops.force_portable():
    portable, portable_jaxpr = _value_and_grads(layer, x, kernel), _jaxpr(layer, x, kernel)
  assert 'custom_vjp' in cpu_jaxpr and 'custom_vjp' not in portable_jaxpr
  if layers is UP:  # lax.conv_transpose: a convolution of the input dilated by the stride
    assert 'lhs_dilation=(2, 2)' in portable_jaxpr and 'lhs_dilation=(2, 2)' not in cpu_jaxpr
  for a, b in zip(jax.tree.leaves(cpu), jax.tree.leaves(portable)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize('portable', [False, True])
def test_bad_shapes_are_clear_errors(portable):
  with ops.force_portable() if portable else contextlib.nullcontext():
    with pytest.raises(ValueError, match=r'even height and width, got \(5, 4\)'):
      ops.strided_conv(jnp.zeros((1, 5, 4, 3)), jnp.zeros((4, 4, 3, 2)))
    with pytest.raises(ValueError, match=r'kernel \[4, 4, I, O\], got \(1, 4, 4, 3\) and '
                                         r'\(3, 3, 3, 2\)'):
      ops.strided_conv_transpose(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 3, 2)))
