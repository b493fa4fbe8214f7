"""Nearest-neighbour ground truth: each query's topk nearest database items in a reference
space (raw pixels, or any embedding a user passes), the classic protocol for scoring unsupervised
hashing (`metrics.average_precision_of_sets`, or the relevance `relevance.IndexSets` in a
shared pass, scores codes against it). Euclidean distances, in the engine's query chunks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hashjax.retrieval import engine
from hashjax.runtime import parallel


@functools.lru_cache(maxsize=None)
def _knn_step(topk: int, num_valid: int):
  def step(query_QxF, db_NxF):
    # Squared Euclidean distance up to the per-query constant |q|², in float32.
    score_QxN = 2.0 * query_QxF @ db_NxF.T - jnp.sum(db_NxF * db_NxF, axis=1)[None, :]
    score_QxN = jnp.where(jnp.arange(db_NxF.shape[0])[None, :] < num_valid, score_QxN, -jnp.inf)
    return jax.lax.top_k(score_QxN, topk)[1]  # equal scores: the lower index first
  return parallel.local_query_jit(step, 1, 1)


def neighbour_sets(query_features, db_features, topk: int, *,
                   chunk_size: int | None = None) -> np.ndarray:
  """Indices of each query's topk nearest database items by Euclidean distance, int64 [Q, T],
  nearest first (equal distances: the lower index first). Distances are computed in float32
  (exact for small integer features; otherwise near-equal distances may swap).

  Args:
    query_features: [Q, ...] (images are flattened), db_features: [N, ...] of the same size.
    topk: neighbours per query, 1 ≤ topk ≤ N (e.g. 1% of N).
    chunk_size: queries at once (default: ~2**24 query·item pairs per device).
  """
  query = np.asarray(query_features, np.float32).reshape(len(query_features), -1)
  db = np.asarray(db_features, np.float32).reshape(len(db_features), -1)
  if query.shape[1] != db.shape[1]:
    raise ValueError(f'features differ in size: queries {query.shape[1]}, database '
                     f'{db.shape[1]}')
  if not isinstance(topk, (int, np.integer)) or not 1 <= topk <= len(db):
    raise ValueError(f'topk={topk!r} must be an integer in 1..{len(db)} (the database size)')
  step = _knn_step(int(topk), len(db))
  rows = -(-len(db) // engine.ALIGN) * engine.ALIGN
  db_dev = jax.device_put(engine.pad_rows(db, rows))
  chunk = engine.query_chunk_size(rows, chunk_size)
  parts = [np.asarray(out)[:stop - start] for start, stop, out in engine.each_chunk(
      lambda query_chunk: step(query_chunk, db_dev), (query,), chunk)]
  return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, topk), np.int64)
