"""hashjax/ops/pool.py: max pooling's values and gradients (ties included) on both paths equal
flax's `nn.max_pool`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from hashjax import ops

POOLS = [  # x shape, window, stride, padding
    ((2, 8, 8, 3), 2, 2, 0),     # small_cnn
    ((2, 7, 9, 4), 2, 2, 0),     # odd sizes: the last row / column is dropped
    ((1, 55, 55, 2), 3, 2, 0),   # AlexNet's first pool
    ((1, 13, 13, 3), 3, 2, 0),   # AlexNet's last pool
    ((2, 16, 16, 3), 3, 2, 1),   # ResNet's stem pool
]


def _reference(x, window, stride, padding):
  return nn.max_pool(x, (window,) * 2, (stride,) * 2, padding=((padding,) * 2,) * 2)


def _jaxpr(f, *args) -> str:
  """The jaxpr of a fresh function: `make_jaxpr` caches traces by function, not by path."""
  return str(jax.make_jaxpr(lambda *a: f(*a))(*args))


def _value_and_grad(pool, x):
  """One jitted program, traced afresh (jit caches traces by function, not by path)."""
  return jax.jit(lambda x: jax.value_and_grad(lambda x: jnp.sum(jnp.sin(pool(x))))(x))(x)


@pytest.mark.parametrize('shape,window,stride,padding', POOLS)
def test_slice_max_pool_equals_flax_max_pool(shape, window, stride, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ref = lambda x: _reference(x, window, stride, padding)
  ours = lambda x: ops.slice_max_pool(x, window, stride, padding)
  assert jnp.array_equal(jax.jit(ours)(x), jax.jit(ref)(x))
  assert jnp.allclose(_value_and_grad(ours, x)[1], _value_and_grad(ref, x)[1])
  # Ties (few distinct values): the gradient goes to the first maximum, as in flax and PyTorch.
  ties = jnp.floor(x * 2)
  assert jnp.array_equal(_value_and_grad(ours, ties)[1], _value_and_grad(ref, ties)[1])


@pytest.mark.parametrize('shape,window,stride,padding', POOLS)
def test_both_paths_give_the_same_values_and_gradients(shape, window, stride, padding):
  if not ops.cpu_kernels():
    pytest.skip('the CPU kernels run on an XLA:CPU backend only')
  pool = lambda x: ops.max_pool(x, window, stride, padding)
  ties = jnp.floor(jax.random.normal(jax.random.PRNGKey(0), shape) * 2)
  cpu, cpu_jaxpr = _value_and_grad(pool, ties), _jaxpr(pool, ties)
  with ops.force_portable():
    portable, portable_jaxpr = _value_and_grad(pool, ties), _jaxpr(pool, ties)
  assert 'custom_vjp' in cpu_jaxpr and 'reduce_window' not in cpu_jaxpr
  assert 'custom_vjp' not in portable_jaxpr and 'reduce_window_max' in portable_jaxpr
  assert jnp.array_equal(cpu[0], portable[0])
  assert jnp.array_equal(cpu[1], portable[1])


@pytest.mark.parametrize('pool', [ops.max_pool, ops.slice_max_pool])
def test_a_window_larger_than_the_image_is_a_clear_error(pool):
  with pytest.raises(ValueError, match=r'got shape \(1, 2, 2, 1\), window=3, stride=2'):
    pool(jnp.zeros((1, 2, 2, 1)), 3, 2)
