"""Tests for hashjax/experiments/hashing_cell.py (and `metrics.inner_product_map`, the ranking
of its continuous codes)."""

import jax.numpy as jnp
import numpy as np
import pytest

from hashjax import data, losses, metrics
from hashjax.experiments import hashing_cell


def test_inner_product_map_equals_hamming_map_on_binary_codes():
  rng = np.random.default_rng(0)
  db = np.where(rng.random((300, 16)) > 0.5, 1, -1)
  q = np.where(rng.random((40, 16)) > 0.5, 1, -1)
  q_labels, db_labels = rng.integers(0, 5, 40), rng.integers(0, 5, 300)
  # ±1 codes: −⟨b_q, b_i⟩ = 2·Hamming − K, so both rankings (ties by index) coincide.
  for topk in (50, None):
    assert metrics.inner_product_map(q, db, q_labels, db_labels, topk=topk, chunk_size=16) == (
        pytest.approx(metrics.mean_average_precision(q, db, q_labels, db_labels, topk=topk),
                      abs=1e-7))
  multi_q, multi_db = rng.integers(0, 2, (40, 4)), rng.integers(0, 2, (300, 4))
  assert metrics.inner_product_map(q, db, multi_q, multi_db, topk=50) == pytest.approx(
      metrics.mean_average_precision(q, db, multi_q, multi_db, topk=50), abs=1e-7)
  with pytest.raises(ValueError, match='topk=0 must be a positive integer'):
    metrics.inner_product_map(q, db, q_labels, db_labels, topk=0)


def test_inner_product_map_ranks_by_the_real_values():
  db = np.array([[0.9, 0.1], [0.5, 0.5], [-1.0, 0.0]])
  q = np.array([[1.0, 0.0]])
  # Ranked 0, 1, 2; relevant: 1 and 2 → AP = (1/2 + 2/3) / 2.
  assert metrics.inner_product_map(q, db, np.array([1]), np.array([0, 1, 1])) == (
      pytest.approx((1 / 2 + 2 / 3) / 2))


def test_heldout_losses_sign_and_large_beta():
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, 16))
  relaxed, binary = hashing_cell.heldout_losses(z, labels, beta=1.0, alpha=0.5)
  expected = losses.hashnet_loss(jnp.where(z >= 0, 1.0, -1.0), labels, alpha=0.5,
                                 weighting='none')
  assert float(binary) == pytest.approx(float(expected), rel=1e-6)
  relaxed_big, _ = hashing_cell.heldout_losses(z, labels, beta=1e4, alpha=0.5)
  assert float(relaxed_big) == pytest.approx(float(binary), rel=1e-3)
  assert float(relaxed) != pytest.approx(float(binary), rel=1e-3)


def test_heldout_indices_are_database_items_outside_training():
  source = data.load_source('digits')
  split = data.protocol_split(source.labels, seed=0, query_per_class=5, train_per_class=20)
  heldout = hashing_cell.heldout_indices(split, seed=0, size=64)
  assert len(heldout) == 64 and np.all(np.diff(heldout) > 0)
  assert np.isin(heldout, split.database).all() and not np.isin(heldout, split.train).any()
  np.testing.assert_array_equal(heldout, hashing_cell.heldout_indices(split, seed=0, size=64))


@pytest.mark.parametrize('method', hashing_cell.SHALLOW)
def test_shallow_cells_score_like_deep_ones(method):
  source = data.load_source('digits')
  split = data.protocol_split(source.labels, seed=0, query_per_class=5, train_per_class=20)
  scores = hashing_cell.shallow(method, source, split, bits=16, seed=0, topk=100)
  assert 0.1 < scores['map'] <= 1.0  # 10 classes: a random ranking scores ~0.1
  worst, best = scores['map_interval']
  assert worst <= scores['map'] <= best
  assert len(scores['pr_precision']) == len(scores['pr_recall']) == 17
  assert scores['precision_at_radius_2'] == scores['pr_precision'][2]
  with pytest.raises(ValueError, match="shallow method 'pca'; accepted: lsh, itq"):
    hashing_cell.shallow('pca', source, split, bits=16, seed=0, topk=100)
