import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hashjax.hashing import priors
from hashjax.runtime.disk import write_or_warn


class _Tiny(nn.Module):
  """A 2-layer model z = W2·tanh(W1·x) (flattened images), K = 4."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(4)(jnp.tanh(nn.Dense(5)(x)))


def _brute_force_fisher(model, variables, batches, beta, alpha):
  """Per example, its own gradient with plain loops over the batch (no vmap, no matrices);
  each batch's loops unrolled in one jitted program (compiled once, not op by op)."""
  def batch_squared_grads(params, images, labels):
    h_all = jnp.tanh(beta * model.apply({'params': params}, images))  # held fixed
    out = []
    for i in range(len(images)):
      def ll(params, i=i):
        h_i = jnp.tanh(beta * model.apply({'params': params}, images[i:i + 1]))[0]
        sim, dis = [], []
        for j in range(len(images)):
          if j == i:
            continue
          t = alpha * jnp.dot(h_all[j], h_i)
          s = float(labels[i] == labels[j])
          (sim if s else dis).append(jnp.log1p(jnp.exp(t)) - s * t)
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
        return -(mean(sim) + mean(dis))
      out.append(jax.tree.map(jnp.square, jax.grad(ll)(params)))
    return out

  total, count = None, 0
  for batch in batches:
    labels = tuple(int(y) for y in batch['label'])
    squares = jax.jit(batch_squared_grads, static_argnums=2)(
        variables['params'], jnp.asarray(batch['image']), labels)
    for sq in squares:
      total = sq if total is None else jax.tree.map(jnp.add, total, sq)
      count += 1
  return jax.tree.map(lambda t: t / count, total)


def test_fisher_diagonal_equals_a_brute_force_per_example_fisher():
  model = _Tiny()
  rng = np.random.default_rng(0)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 3, 3, 1)))
  batches = [{'image': rng.normal(size=(6, 3, 3, 1)).astype(np.float32),
              'label': rng.integers(0, 3, size=6)} for _ in range(2)]
  fast = priors.fisher_diagonal(model.apply, variables, batches, beta=2.0, alpha=0.7)
  slow = _brute_force_fisher(model, variables, batches, 2.0, 0.7)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
    assert np.all(np.asarray(a) >= 0)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-9)
  assert max(float(jnp.max(x)) for x in jax.tree.leaves(fast)) > 0


def test_fisher_diagonal_needs_a_batch():
  model = _Tiny()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 3, 1)))
  with pytest.raises(ValueError, match='at least one batch'):
    priors.fisher_diagonal(model.apply, variables, [], beta=1.0, alpha=1.0)


def test_laplace_penalty_by_hand():
  params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([[3.0]])}
  center = {'a': jnp.array([0.0, 0.0]), 'b': jnp.array([[0.0]])}
  fisher = {'a': jnp.array([1.0, 0.5]), 'b': jnp.array([[2.0]])}
  assert float(priors.laplace_penalty(params, center, fisher)) == pytest.approx(
      0.5 * (1 * 1 + 0.5 * 4 + 2 * 9))
  assert float(priors.laplace_penalty(params, center)) == pytest.approx(0.5 * (1 + 4 + 9))
  assert float(priors.laplace_penalty(params, params, fisher)) == 0.0


def test_code_flip_rate_by_hand():
  old = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [-1, -1, -1, -1]])
  new = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [-1, -1, -1, 1]])  # 0, 2 and 1 bits flipped
  out = priors.code_flip_rate(old, new)
  assert out['flip_rate'] == pytest.approx(3 / 12)
  assert out['items_flipped'] == pytest.approx(2 / 3)
  assert priors.code_flip_rate(old, old) == {'flip_rate': 0.0, 'items_flipped': 0.0}
  with pytest.raises(ValueError, match=r'\[N, K\]'):
    priors.code_flip_rate(old, new[:, :3])


def test_fisher_file_round_trip_and_a_missing_entry(tmp_path):
  fisher = {'dense': {'kernel': np.arange(6.0).reshape(2, 3), 'bias': np.ones(3)}}
  path = str(tmp_path / 'fisher.npz')
  assert priors.save_fisher(path, fisher, step=7, beta=2.5, write=write_or_warn)
  loaded, step = priors.load_fisher(path, fisher)
  assert step == 7
  np.testing.assert_array_equal(loaded['dense']['kernel'], fisher['dense']['kernel'])
  with pytest.raises(ValueError, match=r"no Fisher entry \['other'\]"):
    priors.load_fisher(path, {'other': np.zeros(2)})
