"""Tests for hashjax/experiments/hashing_cell.py."""

import jax.numpy as jnp
import numpy as np
import pytest

from hashjax.data import sources as data
from hashjax.data.split import protocol_split
from hashjax.experiments import hashing_cell
from hashjax.hashing import losses


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
  split = protocol_split(source.labels, seed=0, query_per_class=5, train_per_class=20)
  heldout = hashing_cell.heldout_indices(split, seed=0, size=64)
  assert len(heldout) == 64 and np.all(np.diff(heldout) > 0)
  assert np.isin(heldout, split.database).all() and not np.isin(heldout, split.train).any()
  np.testing.assert_array_equal(heldout, hashing_cell.heldout_indices(split, seed=0, size=64))


@pytest.mark.parametrize('method', hashing_cell.SHALLOW)
def test_shallow_cells_score_like_deep_ones(method):
  source = data.load_source('digits')
  split = protocol_split(source.labels, seed=0, query_per_class=5, train_per_class=20)
  scores = hashing_cell.shallow(method, source, split, bits=16, seed=0, topk=100)
  assert 0.1 < scores['map'] <= 1.0  # 10 classes: a random ranking scores ~0.1
  worst, best = scores['map_interval']
  assert worst <= scores['map'] <= best
  assert len(scores['pr_precision']) == len(scores['pr_recall']) == 17
  assert scores['precision@radius2'] == scores['pr_precision'][2]
  with pytest.raises(ValueError, match="shallow method 'pca'; accepted: lsh, itq"):
    hashing_cell.shallow('pca', source, split, bits=16, seed=0, topk=100)
