"""Copy detection over Hamming ranking: each query has exactly one relevant database item.

A query is a transformed image (a crop, a rotation, a quantised or occluded copy) and its one
relevant item is the original, `targets[q]`; the rest of the database are distractors. No
labels are involved. With c items strictly closer than the original and n items at its
distance (the original included, i of them before it in database order):

* 'index' ties: rank = c + i + 1; 'best': c + 1; 'worst': c + n;
* 'expected' (uniformly random order of the n tied items): E[1/rank] = (H[c + n] − H[c]) / n
  and P(rank ≤ k) = clip((k − c) / n, 0, 1), with H the harmonic numbers.

AP of a query is 1/rank (one relevant item); mAP is its mean, recall@k the share of queries
whose original ranks in the first k.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hashjax import codes as codes_lib
from hashjax import metrics
from hashjax import parallel
from hashjax import ranking
from hashjax import selection


@functools.lru_cache(maxsize=None)
def _counts_step(num_valid: int, bits: int):
  """Chunk function (query words, targets, db words) → (closer, tied, tied before) int32 [Q]."""

  def counts(query_QxU, target_Q, db_NxU):
    dist_QxN = codes_lib.word_distances(query_QxU, db_NxU, num_valid, bits)
    at_Qx1 = jnp.take_along_axis(dist_QxN, target_Q[:, None], axis=1)
    tied_QxN = dist_QxN == at_Qx1
    before_QxN = jnp.arange(dist_QxN.shape[1], dtype=jnp.int32)[None, :] < target_Q[:, None]
    return (selection.count_true(dist_QxN < at_Qx1), selection.count_true(tied_QxN),
            selection.count_true(tied_QxN & before_QxN))

  return parallel.local_query_jit(counts, 2, 1)


def _check_targets(targets, num_query: int, num_db: int) -> np.ndarray:
  targets = np.asarray(targets)
  if targets.shape != (num_query,) or not np.issubdtype(targets.dtype, np.integer):
    raise ValueError(f'targets must be one database index per query, int [{num_query}]; got '
                     f'{targets.dtype} {targets.shape}')
  bad = (targets < 0) | (targets >= num_db)
  if np.any(bad):
    raise ValueError(f'target {int(targets[bad][0])} is outside the database (0..{num_db - 1})')
  return targets.astype(np.int32)


def copy_detection(query_codes, db_codes, targets, *, ties: str = 'index',
                   recall_at=(1, 10), chunk_size: int | None = None) -> dict[str, float]:
  """mAP and recall@k of copy detection (see the module docstring).

  Args:
    query_codes: [Q, K] ±1 or packed uint8 (the transformed copies).
    db_codes: [N, K] of the same kind (originals and distractors).
    targets: int [Q], the database index of each query's original.
    ties: 'index', 'best', 'worst' or 'expected'.
    recall_at: the cutoffs k of recall@k (positive integers).
    chunk_size: queries evaluated at once (default: ~2**24 query·item pairs per device).

  Returns:
    {'map': float, f'recall@{k}': float for each k}, each in [0, 1].
  """
  (mode,) = metrics.check_modes(ties)
  for k in recall_at:
    if k is None:
      raise ValueError('recall_at needs integer cutoffs, got None')
    metrics.check_cutoff(k, 'recall_at')
  query_codes, db_codes = metrics.check_codes(query_codes, db_codes)
  targets = _check_targets(targets, len(query_codes), len(db_codes))
  query_QxU, db_NxU = codes_lib.code_words(query_codes), codes_lib.code_words(db_codes)
  num_db, bits = len(db_NxU), 32 * db_NxU.shape[1]
  step = _counts_step(num_db, bits)
  db_dev = jax.device_put(codes_lib.pad_rows(db_NxU))
  chunk = codes_lib.query_chunk_size(num_db, chunk_size)
  run = lambda start, stop: step(codes_lib.pad_chunk(query_QxU[start:stop], chunk),
                                 codes_lib.pad_chunk(targets[start:stop], chunk), db_dev)
  parts = [[], [], []]
  for start, stop, out in codes_lib.dispatch_ahead(run, len(query_QxU), chunk):
    for part, value in zip(parts, out):
      part.append(np.asarray(value)[:stop - start].astype(np.int64))
  closer, tied, before = (np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts)
  return _scores(closer, tied, before, mode, recall_at, num_db)


def _scores(closer, tied, before, mode: str, recall_at, num_db: int) -> dict[str, float]:
  """The means over queries, from each query's counts (int [Q] each)."""
  if mode == 'expected':
    harmonic = ranking.harmonic(num_db)
    inverse_rank = (harmonic[closer + tied] - harmonic[closer]) / tied
    hit = lambda k: np.clip((k - closer) / tied, 0.0, 1.0)
  else:
    rank = {'index': closer + before + 1, 'best': closer + 1, 'worst': closer + tied}[mode]
    inverse_rank = 1.0 / rank
    hit = lambda k: (rank <= k).astype(np.float64)
  scores = {'map': float(np.mean(inverse_rank)) if len(closer) else 0.0}
  for k in recall_at:
    scores[f'recall@{int(k)}'] = float(np.mean(hit(int(k)))) if len(closer) else 0.0
  return scores
