"""Pairwise hashing losses: HashNet's weighted maximum likelihood and DHN.

Both use the pairwise likelihood of Cao et al. (ICCV 2017, eq. 4): for codes h_i, h_j and
similarity s_ij ∈ {0, 1}, p(s_ij | h_i, h_j) = σ(α⟨h_i, h_j⟩)^s_ij (1 − σ(α⟨h_i, h_j⟩))^(1−s_ij),
whose negative log is  softplus(α⟨h_i,h_j⟩) − α·s_ij·⟨h_i,h_j⟩  (nats per pair).
Pairs are all ordered pairs i ≠ j of the batch passed in; under data parallelism that is the
global batch, so pairs across devices count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

WEIGHTINGS = ('balanced', 'fixed', 'none')
SIMILARITIES = ('hard', 'soft')


def similarity_matrix(labels_BxL: jax.Array) -> jax.Array:
  """s_ij = 1 where items i and j share at least one label (y_i·y_j > 0).

  Args:
    labels_BxL: int class ids [B] or multi-hot {0, 1} labels [B, L].

  Returns:
    float32 [B, B] matrix of 0/1 (the diagonal included).
  """
  labels = jnp.asarray(labels_BxL)
  if labels.ndim == 1:
    return (labels[:, None] == labels[None, :]).astype(jnp.float32)
  if labels.ndim == 2:
    y = labels.astype(jnp.float32)
    return (y @ y.T > 0).astype(jnp.float32)
  raise ValueError(f'labels must be class ids [B] or multi-hot [B, L], got shape {labels.shape}')


def soft_similarity_matrix(labels_BxL: jax.Array) -> jax.Array:
  """Graded similarity s_ij = |y_i ∧ y_j| / |y_i ∨ y_j| (Jaccard) of multi-hot labels.

  Args:
    labels_BxL: multi-hot {0, 1} labels [B, L] (class ids have no grades: a ValueError).

  Returns:
    float32 [B, B] in [0, 1]; 0 for two items without labels.
  """
  labels = jnp.asarray(labels_BxL)
  if labels.ndim != 2:
    raise ValueError("similarity='soft' needs multi-hot labels [B, L]; got single-label data "
                     f'(class ids, shape {labels.shape}); use similarity=\'hard\'')
  y = labels.astype(jnp.float32)
  shared_BxB = y @ y.T
  count_B = jnp.sum(y, axis=1)
  union_BxB = count_B[:, None] + count_B[None, :] - shared_BxB
  return jnp.where(union_BxB > 0, shared_BxB / jnp.maximum(union_BxB, 1.0), 0.0)


def pairwise_nll(h_BxK: jax.Array, s_BxB: jax.Array, alpha: float) -> jax.Array:
  """Per-pair negative log-likelihood softplus(αθ) − α·s·θ, θ = ⟨h_i, h_j⟩; [B, B], nats.

  `jax.nn.softplus` is log(1 + e^x) computed without overflow for large |x|.
  """
  theta_BxB = alpha * (h_BxK @ h_BxK.T)
  return jax.nn.softplus(theta_BxB) - s_BxB * theta_BxB


def _default_alpha(h_BxK, alpha):
  return 10.0 / h_BxK.shape[-1] if alpha is None else alpha


def hashnet_loss(h_BxK: jax.Array, labels_BxL: jax.Array, *, alpha: float | None = None,
                 weighting: str = 'balanced', class_num: float | None = None,
                 similarity: str = 'hard') -> jax.Array:
  """HashNet's weighted pairwise maximum-likelihood loss (Cao et al. 2017, eqs. 4–6).

  Args:
    h_BxK: continuous codes [B, K], usually tanh(β·z).
    labels_BxL: int class ids [B] or multi-hot labels [B, L]; s_ij = 1 iff y_i·y_j > 0.
    alpha: the sigmoid's scale α; default 10 / K (the authors' PyTorch code).
    weighting: how similar (S1) and dissimilar (S0) pairs are weighted, over S = all ordered
      pairs i ≠ j:
      'balanced' — the paper's w_ij = |S|/|S1| for similar and |S|/|S0| for dissimilar pairs,
        counted in this batch; the loss is Σ w_ij ℓ_ij / |S| = mean_{S1} ℓ + mean_{S0} ℓ.
      'fixed' — the authors' code: similar pairs × `class_num`, divided by the weighted pair
        count (#similar·class_num + #dissimilar). Set class_num ≈ |S|/|S1| of the training set.
      'none' — the plain mean over S (the ablation without weighting).
    class_num: the weight of similar pairs for 'fixed' (required there, unused otherwise).
    similarity: 'hard' (s_ij ∈ {0, 1} as above) or 'soft' (multi-hot labels only: the
      Jaccard similarity, a soft target of the same cross-entropy; the weightings then count
      masses: pair ij adds s_ij to the similar mass and 1 − s_ij to the dissimilar one, and
      its loss splits the same way, s·(−log σ(αθ)) + (1 − s)·(−log(1 − σ(αθ))), so 'balanced'
      is the similar part's mean over the similar mass plus the dissimilar part's over the
      dissimilar mass. With 0/1 similarities that is the hard loss.)

  Returns:
    Scalar float32 loss in nats per (weighted) pair.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f'unknown weighting {weighting!r}; accepted: {", ".join(WEIGHTINGS)}')
  if similarity not in SIMILARITIES:
    raise ValueError(f'unknown similarity {similarity!r}; accepted: {", ".join(SIMILARITIES)}')
  if weighting == 'fixed' and (class_num is None or class_num <= 0):
    raise ValueError(f"weighting='fixed' needs class_num > 0, got {class_num!r}")
  h = jnp.asarray(h_BxK, jnp.float32)
  if similarity == 'soft':
    return _soft_loss(h, soft_similarity_matrix(labels_BxL), _default_alpha(h, alpha),
                      weighting, class_num)
  s_BxB = similarity_matrix(labels_BxL)
  nll_BxB = pairwise_nll(h, s_BxB, _default_alpha(h, alpha))
  off_diag_BxB = 1.0 - jnp.eye(h.shape[0], dtype=jnp.float32)
  similar_BxB = s_BxB * off_diag_BxB
  dissimilar_BxB = (1.0 - s_BxB) * off_diag_BxB
  if weighting == 'none':
    return jnp.sum(nll_BxB * off_diag_BxB) / jnp.maximum(off_diag_BxB.sum(), 1.0)
  if weighting == 'fixed':
    w_BxB = class_num * similar_BxB + dissimilar_BxB
    return jnp.sum(w_BxB * nll_BxB) / jnp.maximum(w_BxB.sum(), 1.0)
  # 'balanced': an empty class of pairs contributes nothing (its weight would be undefined).
  mean_similar = jnp.sum(similar_BxB * nll_BxB) / jnp.maximum(similar_BxB.sum(), 1.0)
  mean_dissimilar = jnp.sum(dissimilar_BxB * nll_BxB) / jnp.maximum(dissimilar_BxB.sum(), 1.0)
  return mean_similar + mean_dissimilar


def _soft_loss(h_BxK, s_BxB, alpha: float, weighting: str, class_num) -> jax.Array:
  """`hashnet_loss` with graded similarities s_ij ∈ [0, 1] (see its `similarity`)."""
  theta_BxB = alpha * (h_BxK @ h_BxK.T)
  off_diag_BxB = 1.0 - jnp.eye(h_BxK.shape[0], dtype=jnp.float32)
  similar_BxB, dissimilar_BxB = s_BxB * off_diag_BxB, (1.0 - s_BxB) * off_diag_BxB
  # −log σ(θ) = softplus(−θ) and −log(1 − σ(θ)) = softplus(θ).
  similar_part = jnp.sum(similar_BxB * jax.nn.softplus(-theta_BxB))
  dissimilar_part = jnp.sum(dissimilar_BxB * jax.nn.softplus(theta_BxB))
  if weighting == 'none':
    return (similar_part + dissimilar_part) / jnp.maximum(off_diag_BxB.sum(), 1.0)
  if weighting == 'fixed':
    mass = class_num * similar_BxB.sum() + dissimilar_BxB.sum()
    return (class_num * similar_part + dissimilar_part) / jnp.maximum(mass, 1e-12)
  mean = lambda part, mass: jnp.where(mass > 0, part / jnp.maximum(mass, 1e-12), 0.0)
  return mean(similar_part, similar_BxB.sum()) + mean(dissimilar_part, dissimilar_BxB.sum())


def quantization_penalty(u_BxK: jax.Array) -> jax.Array:
  """DHN's smoothed quantization loss: mean over entries of log cosh(|u| − 1)."""
  x = jnp.abs(jnp.asarray(u_BxK, jnp.float32)) - 1.0
  # log cosh(x) = |x| + softplus(−2|x|) − log 2, stable for large |x|.
  ax = jnp.abs(x)
  return jnp.mean(ax + jax.nn.softplus(-2.0 * ax) - jnp.log(2.0))


def dhn_loss(u_BxK: jax.Array, labels_BxL: jax.Array, *, alpha: float | None = None,
             quantization_weight: float = 0.1) -> jax.Array:
  """Deep Hashing Network (Zhu et al., AAAI 2016): unweighted pairwise likelihood plus a
  quantization penalty pulling |u| towards 1.

  Args:
    u_BxK: continuous codes [B, K]. labels_BxL: as in `hashnet_loss`.
    alpha: sigmoid scale, default 10 / K. quantization_weight: λ on the penalty.

  Returns:
    Scalar float32: mean pairwise NLL (nats) + λ · mean log cosh(|u| − 1).
  """
  pairwise = hashnet_loss(u_BxK, labels_BxL, alpha=alpha, weighting='none')
  return pairwise + quantization_weight * quantization_penalty(u_BxK)

