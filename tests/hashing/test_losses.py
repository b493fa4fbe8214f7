import math

import jax.numpy as jnp
import numpy as np
import pytest

from hashjax import dhn_loss, hashnet_loss
from hashjax.hashing.losses import (
  quantization_penalty,
  similarity_matrix,
  soft_similarity_matrix,
)


def _pair_terms(h, s, alpha):
  """Loop-by-hand reference: ℓ_ij = log(1 + e^{α⟨h_i,h_j⟩}) − α s_ij ⟨h_i,h_j⟩ over i ≠ j."""
  terms = []
  for i in range(len(h)):
    for j in range(len(h)):
      if i != j:
        theta = alpha * float(np.dot(h[i], h[j]))
        terms.append((math.log1p(math.exp(theta)) - s[i][j] * theta, s[i][j]))
  return terms


H = np.array([[0.9, -0.5, 0.2], [0.7, -0.1, 0.4], [-0.8, 0.6, -0.3], [0.1, 0.2, -0.9]])
LABELS = np.array([0, 0, 1, 2])
S = (LABELS[:, None] == LABELS[None, :]).astype(float)


def test_balanced_weighting_matches_hand_computation():
  terms = _pair_terms(H, S, alpha=0.5)
  sim = [t for t, s in terms if s == 1]
  dis = [t for t, s in terms if s == 0]
  # w = |S|/|S1| and |S|/|S0|, normalised by |S|: the two class means added.
  expected = sum(sim) / len(sim) + sum(dis) / len(dis)
  got = hashnet_loss(jnp.array(H), jnp.array(LABELS), alpha=0.5, weighting='balanced')
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_fixed_weighting_matches_authors_normalisation():
  terms = _pair_terms(H, S, alpha=0.5)
  weights = [5.0 if s else 1.0 for _, s in terms]
  expected = sum(w * t for w, (t, _) in zip(weights, terms)) / sum(weights)
  got = hashnet_loss(jnp.array(H), jnp.array(LABELS), alpha=0.5, weighting='fixed', class_num=5)
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_no_weighting_is_plain_mean_and_alpha_defaults_to_10_over_bits():
  terms = _pair_terms(H, S, alpha=10 / 3)
  expected = sum(t for t, _ in terms) / len(terms)
  assert float(hashnet_loss(jnp.array(H), jnp.array(LABELS), weighting='none')) == pytest.approx(
      expected, rel=1e-5)


def test_multi_hot_labels_share_any_label():
  multi = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 0], [1, 1, 0]])
  s = similarity_matrix(jnp.array(multi))
  expected_s = np.array([[1, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 1]])
  np.testing.assert_array_equal(s, expected_s)
  terms = _pair_terms(H, expected_s, alpha=0.5)
  sim = [t for t, sv in terms if sv == 1]
  dis = [t for t, sv in terms if sv == 0]
  got = hashnet_loss(jnp.array(H), jnp.array(multi), alpha=0.5)
  assert float(got) == pytest.approx(sum(sim) / len(sim) + sum(dis) / len(dis), rel=1e-5)


def test_stable_for_large_inner_products():
  h = jnp.ones((4, 64))
  loss = hashnet_loss(h, jnp.array([0, 1, 0, 1]), alpha=100.0)
  # dissimilar pairs with θ = 6400: softplus(θ) = θ exactly; similar pairs contribute 0.
  assert np.isfinite(float(loss)) and float(loss) == pytest.approx(6400.0, rel=1e-6)


def test_all_pairs_similar_has_no_empty_class_nan():
  loss = hashnet_loss(jnp.array(H), jnp.zeros(4, jnp.int32), alpha=0.5)
  assert np.isfinite(float(loss))


def test_dhn_penalty_is_zero_at_binary_codes():
  u = jnp.array([[1.0, -1.0], [-1.0, -1.0]])
  assert float(quantization_penalty(u)) == pytest.approx(0.0, abs=1e-6)
  pairwise = hashnet_loss(u, jnp.array([0, 1]), weighting='none')
  assert float(dhn_loss(u, jnp.array([0, 1]))) == pytest.approx(float(pairwise), abs=1e-6)
  half = jnp.full((2, 2), 0.5)
  assert float(quantization_penalty(half)) == pytest.approx(math.log(math.cosh(0.5)), rel=1e-5)


def test_bad_weighting_arguments():
  with pytest.raises(ValueError, match="unknown weighting 'paper'"):
    hashnet_loss(jnp.array(H), jnp.array(LABELS), weighting='paper')
  with pytest.raises(ValueError, match='class_num'):
    hashnet_loss(jnp.array(H), jnp.array(LABELS), weighting='fixed')


def test_soft_similarity_is_the_jaccard_index():
  labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
  expected = np.array([[1, 0.5, 0, 0], [0.5, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_allclose(soft_similarity_matrix(jnp.array(labels)), expected)


@pytest.mark.parametrize('weighting', ['balanced', 'fixed', 'none'])
def test_soft_loss_with_0_1_similarities_is_the_hard_loss(weighting):
  # One label per item: every Jaccard index is 0 or 1.
  one_hot = np.eye(3, dtype=np.int64)[np.array(LABELS) % 3]
  args = dict(weighting=weighting, class_num=4.0)
  hard = hashnet_loss(jnp.array(H), jnp.array(one_hot), **args)
  soft = hashnet_loss(jnp.array(H), jnp.array(one_hot), similarity='soft', **args)
  assert float(soft) == pytest.approx(float(hard), rel=1e-5)


@pytest.mark.parametrize('weighting', ['balanced', 'fixed', 'none'])
def test_soft_loss_matches_a_direct_computation(weighting):
  rng = np.random.default_rng(0)
  h = np.tanh(rng.normal(size=(7, 12)))
  labels = (rng.random((7, 5)) > 0.5).astype(np.int64)
  shared = labels @ labels.T
  union = labels.sum(1)[:, None] + labels.sum(1)[None, :] - shared
  s = np.where(union > 0, shared / np.maximum(union, 1), 0.0)
  off = 1 - np.eye(7)
  theta = (10 / 12) * h @ h.T
  softplus = lambda x: np.logaddexp(0, x)
  sim, dis = np.sum(s * off * softplus(-theta)), np.sum((1 - s) * off * softplus(theta))
  expected = {'balanced': sim / np.sum(s * off) + dis / np.sum((1 - s) * off),
              'fixed': (3 * sim + dis) / (3 * np.sum(s * off) + np.sum((1 - s) * off)),
              'none': (sim + dis) / off.sum()}[weighting]
  got = hashnet_loss(jnp.array(h), jnp.array(labels), weighting=weighting, class_num=3.0,
                     similarity='soft')
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_soft_similarity_needs_multi_hot_labels():
  with pytest.raises(ValueError, match="similarity='soft' needs multi-hot labels"):
    hashnet_loss(jnp.array(H), jnp.array(LABELS), similarity='soft')
  with pytest.raises(ValueError, match="unknown similarity 'graded'"):
    hashnet_loss(jnp.array(H), jnp.array(LABELS), similarity='graded')
