"""Retrieval metrics over Hamming ranking.

Conventions (they change published numbers, so they are fixed and documented here):

* Relevance: a database item is relevant to a query when they share at least one label
  (equal class ids, or y_q·y_i > 0 for multi-hot labels).
* Ranking: ascending Hamming distance. With `ties='index'` (the default) equal distances are
  ordered by database index, so the result is deterministic. (Common research code breaks
  ties with an unstable sort, i.e. arbitrarily.)
* AP@K = (1/R_K) Σ_{k≤K} P@k · rel_k, with R_K the number of relevant items in the top K.
  A query with R_K = 0 scores 0 and still counts in the mean (DeepHash-pytorch's convention;
  the HashNet PyTorch test drops such queries instead, which gives higher numbers).
* Precision within Hamming radius r: relevant / retrieved among items at distance ≤ r; an
  empty Hamming ball counts as precision 0 (thulab/DeepHash's convention). Recall within
  radius r: relevant retrieved / relevant in the database; 0 for a query with none.

Codes may be ±1 arrays [N, K] or packed uint8 [N, ceil(K/8)] (see `hashjax.codes`).
Labels are int class ids [N] or multi-hot [N, L]. Everything runs jitted in query chunks of
`chunk_size`, so memory is O(chunk_size · N).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hashjax.codes import hamming_distance

TIES = ('index',)


def relevance(query_labels, db_labels) -> jax.Array:
  """1.0 where query q and database item i share a label; float32 [Q, N]."""
  query_labels, db_labels = jnp.asarray(query_labels), jnp.asarray(db_labels)
  if query_labels.ndim != db_labels.ndim or query_labels.ndim not in (1, 2):
    raise ValueError('labels must both be class ids [N] or both multi-hot [N, L]; got shapes '
                     f'{query_labels.shape} and {db_labels.shape}')
  if query_labels.ndim == 1:
    return (query_labels[:, None] == db_labels[None, :]).astype(jnp.float32)
  inner = query_labels.astype(jnp.float32) @ db_labels.astype(jnp.float32).T
  return (inner > 0).astype(jnp.float32)


def _check_inputs(query_codes, db_codes, query_labels, db_labels):
  query_codes, db_codes = np.asarray(query_codes), np.asarray(db_codes)
  query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
  if query_codes.ndim != 2 or db_codes.ndim != 2 or query_codes.shape[1] != db_codes.shape[1]:
    raise ValueError('codes must be [Q, K] and [N, K] with the same K; got shapes '
                     f'{query_codes.shape} and {db_codes.shape}')
  if len(query_labels) != len(query_codes) or len(db_labels) != len(db_codes):
    raise ValueError(f'{len(query_codes)} query codes but {len(query_labels)} query labels, '
                     f'{len(db_codes)} database codes but {len(db_labels)} database labels')
  return query_codes, db_codes, query_labels, db_labels


def _query_chunks(query_codes, query_labels, chunk_size):
  """Yields (codes, labels, n_valid) chunks padded to chunk_size (one compiled shape)."""
  n = len(query_codes)
  chunk = min(chunk_size, n)
  for start in range(0, n, chunk):
    codes, labels = query_codes[start:start + chunk], query_labels[start:start + chunk]
    valid = len(codes)
    if valid < chunk:
      pad = chunk - valid
      codes = np.concatenate([codes, np.repeat(codes[-1:], pad, 0)])
      labels = np.concatenate([labels, np.repeat(labels[-1:], pad, 0)])
    yield codes, labels, valid


@functools.partial(jax.jit, static_argnames=('topk',))
def _average_precision_chunk(query_codes, db_codes, query_labels, db_labels, topk):
  dist_QxN = hamming_distance(query_codes, db_codes)
  rel_QxN = relevance(query_labels, db_labels)
  if topk is None:
    order_QxN = jnp.argsort(dist_QxN, axis=1, stable=True)
  else:
    # lax.top_k returns equal values lower index first: index tie-breaking, no full sort.
    _, order_QxN = jax.lax.top_k(-dist_QxN, topk)
  rel_QxK = jnp.take_along_axis(rel_QxN, order_QxN, axis=1)
  hits_QxK = jnp.cumsum(rel_QxK, axis=1)
  ranks_K = jnp.arange(1, rel_QxK.shape[1] + 1, dtype=jnp.float32)
  num_relevant_Q = hits_QxK[:, -1]
  ap_sum_Q = jnp.sum(rel_QxK * hits_QxK / ranks_K, axis=1)
  return jnp.where(num_relevant_Q > 0, ap_sum_Q / jnp.maximum(num_relevant_Q, 1.0), 0.0)


def average_precision(query_codes, db_codes, query_labels, db_labels, *, topk=None,
                      ties: str = 'index', chunk_size: int = 256) -> np.ndarray:
  """Per-query AP@topk over Hamming ranking (see the module docstring for conventions).

  Args:
    query_codes: [Q, K] ±1 or packed uint8. db_codes: [N, K] of the same kind.
    query_labels, db_labels: class ids [Q], [N] or multi-hot [Q, L], [N, L].
    topk: cutoff K (None or ≥ N: the whole database).
    ties: how equal distances are ordered; 'index' (by database index).
    chunk_size: queries evaluated at once (memory ∝ chunk_size · N).

  Returns:
    float64 numpy array [Q] of AP values in [0, 1].
  """
  if ties not in TIES:
    raise ValueError(f'unknown ties mode {ties!r}; accepted: {", ".join(TIES)}')
  query_codes, db_codes, query_labels, db_labels = _check_inputs(
      query_codes, db_codes, query_labels, db_labels)
  if topk is not None and (not isinstance(topk, (int, np.integer)) or topk < 1):
    raise ValueError(f'topk={topk!r} must be a positive integer or None (whole database)')
  k = None if topk is None or topk >= len(db_codes) else int(topk)
  db_codes_dev, db_labels_dev = jnp.asarray(db_codes), jnp.asarray(db_labels)
  aps = []
  for codes, labels, valid in _query_chunks(query_codes, query_labels, chunk_size):
    ap = _average_precision_chunk(codes, db_codes_dev, labels, db_labels_dev, k)
    aps.append(np.asarray(ap)[:valid])
  return np.concatenate(aps).astype(np.float64)


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, *, topk=None,
                           ties: str = 'index', chunk_size: int = 256) -> float:
  """mAP@topk: the mean over all queries of `average_precision` (same arguments).

  Example:
    >>> q = np.array([[1, 1], [-1, -1]]); db = np.array([[1, 1], [1, -1], [-1, -1]])
    >>> mean_average_precision(q, db, np.array([0, 1]), np.array([0, 0, 1]))
    1.0
  """
  return float(np.mean(average_precision(query_codes, db_codes, query_labels, db_labels,
                                         topk=topk, ties=ties, chunk_size=chunk_size)))


@functools.partial(jax.jit, static_argnames=('radius',))
def _radius_chunk(query_codes, db_codes, query_labels, db_labels, radius):
  in_ball_QxN = (hamming_distance(query_codes, db_codes) <= radius).astype(jnp.float32)
  rel_QxN = relevance(query_labels, db_labels)
  retrieved_Q = in_ball_QxN.sum(1)
  hits_Q = (in_ball_QxN * rel_QxN).sum(1)
  relevant_Q = rel_QxN.sum(1)
  precision_Q = jnp.where(retrieved_Q > 0, hits_Q / jnp.maximum(retrieved_Q, 1.0), 0.0)
  recall_Q = jnp.where(relevant_Q > 0, hits_Q / jnp.maximum(relevant_Q, 1.0), 0.0)
  return precision_Q, recall_Q


def _radius_metrics(query_codes, db_codes, query_labels, db_labels, radius, chunk_size):
  if not isinstance(radius, (int, np.integer)) or radius < 0:
    raise ValueError(f'radius={radius!r} must be a non-negative integer number of bits')
  query_codes, db_codes, query_labels, db_labels = _check_inputs(
      query_codes, db_codes, query_labels, db_labels)
  db_codes_dev, db_labels_dev = jnp.asarray(db_codes), jnp.asarray(db_labels)
  precision, recall = [], []
  for codes, labels, valid in _query_chunks(query_codes, query_labels, chunk_size):
    p, r = _radius_chunk(codes, db_codes_dev, labels, db_labels_dev, int(radius))
    precision.append(np.asarray(p)[:valid])
    recall.append(np.asarray(r)[:valid])
  return float(np.mean(np.concatenate(precision))), float(np.mean(np.concatenate(recall)))


def precision_at_radius(query_codes, db_codes, query_labels, db_labels, *, radius: int = 2,
                        chunk_size: int = 256) -> float:
  """Mean precision of the Hamming ball of `radius` bits around each query.

  Args as in `average_precision`. An empty ball counts as precision 0.

  Returns:
    float in [0, 1].
  """
  return _radius_metrics(query_codes, db_codes, query_labels, db_labels, radius, chunk_size)[0]


def recall_at_radius(query_codes, db_codes, query_labels, db_labels, *, radius: int = 2,
                     chunk_size: int = 256) -> float:
  """Mean recall of the Hamming ball of `radius` bits (relevant retrieved / relevant)."""
  return _radius_metrics(query_codes, db_codes, query_labels, db_labels, radius, chunk_size)[1]
