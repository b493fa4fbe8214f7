"""Exact top-k selection (hashjax/retrieval/selection.py) against numpy's stable sorts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hashjax.retrieval import engine, ranking, selection


def _reference_nearest(dist, topk):
  order = np.argsort(dist.astype(np.int64), axis=1, kind='stable')[:, :topk]
  return np.take_along_axis(dist, order, axis=1), order


def test_count_true_matches_numpy():
  rng = np.random.default_rng(1)
  mask = rng.random((7, 512)) < np.array([0, 0.01, 0.3, 0.5, 0.9, 0.99, 1])[:, None]
  np.testing.assert_array_equal(np.asarray(jax.jit(selection.count_true)(jnp.asarray(mask))),
                                mask.sum(1))


@pytest.mark.parametrize('n', [128, 384, 1024])
def test_select_first_returns_true_positions_in_order(n):
  rng = np.random.default_rng(2)
  mask = rng.random((6, n)) < np.array([0.0, 0.01, 0.3, 0.9, 1.0, 0.5])[:, None]
  mask[5, :] = False
  mask[5, [0, 31, 32, 127, n - 1]] = True  # word and block edges
  idx, valid = jax.jit(selection.select_first, static_argnums=1)(jnp.asarray(mask), 40)
  for row in range(6):
    expected = np.flatnonzero(mask[row])[:40]
    assert int(np.sum(valid[row])) == len(expected)
    np.testing.assert_array_equal(np.asarray(idx[row])[:len(expected)], expected)


def _distance_rows(rng, n, bits):
  """Rows that stress the threshold search: ties everywhere, t = 0, t = bits, and rows whose
  every 16th block (the sample) is unlike the rest."""
  rows = [rng.integers(0, bits + 1, n), np.zeros(n, int), np.full(n, bits),
          np.clip(rng.normal(bits / 2, bits / 10, n), 0, bits).round(),
          rng.integers(0, 3, n)]
  skewed = rng.integers(bits // 2, bits + 1, n)
  blocks = skewed.reshape(-1, selection.BLOCK)
  blocks[::16] = 0  # the sampled blocks are all at distance 0
  rows.append(blocks.reshape(-1))
  skewed = rng.integers(0, 4, n)
  skewed.reshape(-1, selection.BLOCK)[::16] = bits  # and here the farthest
  rows.append(skewed)
  return np.stack(rows)


@pytest.mark.parametrize('n,bits,topk', [(256, 16, 1), (256, 16, 100), (8192, 64, 1000),
                                         (16384, 64, 17), (8192, 300, 500), (8192, 64, 8192)])
def test_nearest_ordered_by_distance_is_the_stable_sort_prefix(n, bits, topk):
  rng = np.random.default_rng(n + bits + topk)
  dist = _distance_rows(rng, n, bits).astype(engine.distance_dtype(bits))
  got_idx = np.asarray(jax.jit(selection.nearest_in_index_order, static_argnums=(1, 2))(
      jnp.asarray(dist), topk, bits))
  assert np.all(np.diff(got_idx, axis=1) > 0)  # index order
  got_dist = np.take_along_axis(dist, got_idx, axis=1)
  order = ranking.order_by_distance(got_dist)
  want_dist, want_idx = _reference_nearest(dist, topk)
  np.testing.assert_array_equal(np.take_along_axis(got_idx, order, axis=1), want_idx)
  np.testing.assert_array_equal(np.take_along_axis(got_dist, order, axis=1), want_dist)
  t, closer = jax.jit(selection.kth_distance, static_argnums=(1, 2))(jnp.asarray(dist), topk,
                                                                    bits)
  np.testing.assert_array_equal(np.asarray(t), want_dist[:, -1])
  np.testing.assert_array_equal(np.asarray(closer), (dist < want_dist[:, -1:]).sum(1))


def test_nearest_never_takes_padding_rows():
  rng = np.random.default_rng(5)
  dist = rng.integers(0, 9, (3, 512)).astype(np.uint8)
  dist[:, 500:] = 255  # the sentinel of padding rows
  idx = jax.jit(selection.nearest_in_index_order, static_argnums=(1, 2))(
      jnp.asarray(dist), 500, 8)
  np.testing.assert_array_equal(np.asarray(idx), np.broadcast_to(np.arange(500), (3, 500)))
