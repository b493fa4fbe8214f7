"""hashjax/ops/dense.py: nn.Dense's values and gradients on both paths, and a donated kernel
updated in place."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hashjax import ops
from tests.ops.paths import jaxpr, on_path


@pytest.mark.parametrize('path', ['cpu', 'portable'])
@pytest.mark.parametrize('x_shape', [(5, 7), (2, 3, 7)])
def test_dense_equals_flax_dense_in_value_and_gradients(x_shape, path):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  ours, ref = ops.Dense(4), nn.Dense(4)
  params = jax.jit(ref.init)(jax.random.PRNGKey(1), x)
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
  # One jitted program per module and path, traced afresh (traces are cached by function).
  value_and_grads = lambda m: jax.jit(lambda p, x: (m.apply(p, x), jax.grad(
      loss(m), argnums=(0, 1))(p, x)))(params, x)
  with on_path(path):
    assert jax.tree.map(jnp.shape, jax.eval_shape(ours.init, jax.random.PRNGKey(1), x)) == (
        jax.tree.map(jnp.shape, params))
    y, ours_grads = value_and_grads(ours)
    # The CPU path goes through `matmul`'s custom VJP, the portable one does not.
    assert ('custom_vjp' in jaxpr(ours.apply, params, x)) == (path == 'cpu')
  y_ref, ref_grads = value_and_grads(ref)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_matmul_equals_xlas_matmul_in_value_and_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7))
  k = jax.random.normal(jax.random.PRNGKey(1), (7, 4))
  np.testing.assert_allclose(ops.matmul(x, k), x @ k, rtol=1e-6, atol=1e-6)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  for a, b in zip(jax.grad(loss(ops.matmul), argnums=(0, 1))(x, k),
                  jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, k)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_other_contractions_fall_back_to_lax():
  x, k = jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
  dims = (((2,), (1,)), ((0,), (0,)))
  np.testing.assert_array_equal(ops.dot_general(x, k, dims), jax.lax.dot_general(x, k, dims))
  assert 'custom_vjp' not in jaxpr(lambda x, k: ops.dot_general(x, k, dims), x, k)


def test_a_donated_kernel_is_updated_in_place_not_copied():
  """With XLA's own gradient, the donated kernel of a layer whose input gradient is needed is
  copied before the in-place update; the zero dependency in `matmul`'s backward pass
  removes that copy."""
  if jax.default_backend() != 'cpu':
    pytest.skip('the copy is an XLA:CPU buffer-assignment matter')

  def step(matmul, w1, w2, x):
    loss = lambda w1, w2: jnp.sum(matmul(jax.nn.relu(matmul(x, w1)), w2) ** 2)
    g1, g2 = jax.grad(loss, argnums=(0, 1))(w1, w2)
    return w1 - 0.01 * g1, w2 - 0.01 * g2

  w1, w2, x = jnp.ones((64, 32)), jnp.ones((32, 16)), jnp.ones((8, 64))

  def copied(matmul):
    update = lambda w1, w2, x: step(matmul, w1, w2, x)
    hlo = jax.jit(update, donate_argnums=(0, 1)).lower(w1, w2, x).compile().as_text()
    return re.findall(r'= f32\[32,16\]\S* copy\(', hlo)  # w2's shape (names vary)

  assert copied(lambda a, b: a @ b), 'XLA no longer copies the kernel: revisit ops/dense.py'
  assert not copied(ops.matmul)
