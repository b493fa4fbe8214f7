"""Graded relevance over Hamming ranking: NDCG@k, ACG@k and weighted mAP (WAP@k, see
`hashjax.weighted_ap`), with the tie orders of AP.

Conventions (fixed, as in `hashjax.metrics`):

* Relevance of a database item to a query: the number of labels they share (multi-hot
  labels, y_q·y_i), or 1 / 0 for equal / different class ids.
* NDCG@k = DCG@k / IDCG@k with DCG@k = Σ_{p≤k} (2^rel_p − 1) / log2(p + 1) and IDCG@k the
  DCG@k of the whole database ordered by relevance; a query with no relevant item scores 0.
* ACG@k = (1/k) Σ_{p≤k} rel_p, the mean relevance of the first k ranks.
* Ties (items at one Hamming distance): 'index' (database order, the default), 'best' and
  'worst' (the highest and lowest value over every order of tied items: since the discounts
  fall with the rank, tied items sorted by relevance, descending or ascending), 'expected' (the
  mean over uniformly random tie orders: every rank of a tie group holds the group's mean
  gain, so each metric is a sum over groups in closed form).

Everything runs in query chunks: the device computes distances and relevance (and, for index
ties, the k nearest in index order, `hashjax.selection`); the host counts items per (distance,
relevance) with numpy's bincount and evaluates every tie order from those counts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hashjax import codes as codes_lib
from hashjax import metrics
from hashjax import ranking
from hashjax import selection
from hashjax import weighted_ap


def _grades(query_labels, db_labels) -> jax.Array:
  """Shared labels per (query, item), int32 [Q, N]."""
  if query_labels.ndim == 1:
    return (query_labels[:, None] == db_labels[None, :]).astype(jnp.int32)
  return jnp.round(query_labels.astype(jnp.float32) @ db_labels.astype(jnp.float32).T
                   ).astype(jnp.int32)


@functools.lru_cache(maxsize=None)
def _graded_step(topk: int, num_valid: int, bits: int, max_grade: int):
  """Chunk function → {'key': (distance, grade) bin per item [Q, N], and for topk < N
  'topk_dist', 'topk_grade' [Q, topk] of the topk nearest in index order, or for topk = N
  'dist', 'grade' [Q, N]}."""
  bins = bits + 2  # distances 0..bits and one bin for padding rows
  key_dtype = jnp.uint16 if bins * (max_grade + 1) <= 2**16 else jnp.int32

  def stats(dist_QxN, sample_QxS, query_labels, db_labels):
    valid_N = jnp.arange(dist_QxN.shape[1]) < num_valid
    grade_QxN = jnp.where(valid_N[None, :], _grades(query_labels, db_labels), 0)
    clipped_QxN = jnp.minimum(dist_QxN, bits + 1)
    out = {'key': clipped_QxN.astype(key_dtype) + bins * grade_QxN.astype(key_dtype)}
    if topk < num_valid:
      index_QxT = selection.nearest_in_index_order(dist_QxN, topk, bits, sample_QxS)
      out['topk_dist'] = jnp.take_along_axis(dist_QxN, index_QxT, axis=1)
      out['topk_grade'] = jnp.take_along_axis(grade_QxN, index_QxT, axis=1)
    else:
      out['dist'], out['grade'] = clipped_QxN, grade_QxN
    return out

  return selection.distance_program(stats, num_valid, bits)


def _ranked(gain_QxT: np.ndarray, discount_T: np.ndarray) -> np.ndarray:
  return np.einsum('qt,t->q', gain_QxT.astype(np.float64), discount_T)


def _group_sums(count_QxGxR, value_G, prefix, topk: int, mode: str) -> np.ndarray:
  """Σ over ranks p ≤ topk of value(rel_p)·w_p, float64 [Q], for the tie order `mode`, from
  counts of items per (relevance g, distance r); prefix[p] = Σ_{i≤p} w_i (prefix[0] = 0)."""
  count = count_QxGxR.astype(np.int64)
  size_QxR = count.sum(axis=1)
  before_QxR = np.cumsum(size_QxR, axis=1) - size_QxR  # ranks taken by closer groups
  window = lambda start, num: (prefix[np.minimum(start + num, topk)]
                               - prefix[np.minimum(start, topk)])
  if mode == 'expected':  # each rank of a group holds the group's mean value
    total_QxR = np.einsum('qgr,g->qr', count.astype(np.float64), value_G)
    mean_QxR = np.where(size_QxR > 0, total_QxR / np.maximum(size_QxR, 1), 0.0)
    return np.sum(mean_QxR * window(before_QxR, size_QxR), axis=1)
  # 'best': a group's items by relevance, highest first; 'worst': lowest first.
  order = np.argsort(value_G)[::-1] if mode == 'best' else np.argsort(value_G)
  ahead = np.cumsum(count[:, order], axis=1) - count[:, order]  # in-group ranks taken first
  start_QxGxR = before_QxR[:, None, :] + ahead
  sums = value_G[order][None, :, None] * window(start_QxGxR, count[:, order])
  return np.sum(sums, axis=(1, 2))


def _chunk_metrics(out: dict, topk: int, num_db: int, bits: int, modes, discount_prefix,
                   harmonic):
  """{f'ndcg:{mode}', f'acg:{mode}', f'wap:{mode}'} float64 [q] of one chunk's outputs."""
  grades = out['key'].max(initial=0) // (bits + 2) + 1
  count_QxGxR = ranking.level_counts(out['key'], bits, grades)
  gain_G = 2.0 ** np.arange(grades) - 1
  rel_G = np.arange(grades, dtype=np.float64)
  # The ideal ranking: every item in one group, best order.
  ideal = _group_sums(count_QxGxR.sum(axis=2, keepdims=True), gain_G, discount_prefix, topk,
                      'best')
  results = {}
  for mode in modes:
    if mode == 'index':
      dist, grade = ((out['topk_dist'], out['topk_grade']) if 'topk_dist' in out else
                     (out['dist'][:, :num_db], out['grade'][:, :num_db]))
      grade = np.take_along_axis(grade, ranking.order_by_distance(dist), axis=1)[:, :topk]
      dcg = _ranked(2.0 ** grade - 1, np.diff(discount_prefix[:topk + 1]))
      acg = grade.sum(axis=1) / topk
      positive = grade > 0
      num_positive = positive.sum(axis=1)
      wap_sum = _ranked(positive * np.cumsum(grade, axis=1), 1.0 / np.arange(1, topk + 1))
      wap = np.where(num_positive > 0, wap_sum / np.maximum(num_positive, 1), 0.0)
    else:
      dcg = _group_sums(count_QxGxR, gain_G, discount_prefix, topk, mode)
      acg = _group_sums(count_QxGxR, rel_G, np.arange(num_db + 1.0), topk, mode) / topk
      wap = weighted_ap.weighted_ap(count_QxGxR, topk, harmonic, mode)
    results[f'wap:{mode}'] = wap
    results[f'ndcg:{mode}'] = np.where(ideal > 0, dcg / np.maximum(ideal, 1e-300), 0.0)
    results[f'acg:{mode}'] = acg
  return results


def graded_metrics(query_codes, db_codes, query_labels, db_labels, *, topk=None,
                   ties=('index',), chunk_size: int | None = None) -> dict[str, np.ndarray]:
  """Per-query NDCG@topk and ACG@topk over Hamming ranking, for every requested tie order.

  Args:
    query_codes: [Q, K] ±1 or packed uint8. db_codes: [N, K] of the same kind.
    query_labels, db_labels: multi-hot [Q, L], [N, L] (relevance = shared labels) or class
      ids [Q], [N] (relevance 1 / 0).
    topk: the cutoff (None or ≥ N: the whole database).
    ties: a tie order or a sequence of them: 'index', 'best', 'worst', 'expected'.
    chunk_size: queries evaluated at once (default: ~2**24 query·item pairs per device).

  Returns:
    {f'ndcg:{mode}', f'acg:{mode}', f'wap:{mode}'}: float64 numpy arrays [Q]; NDCG in
    [0, 1], ACG and WAP (weighted mAP, `hashjax.weighted_ap`) in [0, L].
  """
  modes = metrics.check_modes(ties)
  metrics.check_cutoff(topk, 'topk')
  query_codes, db_codes, query_labels, db_labels = metrics.check_inputs(
      query_codes, db_codes, query_labels, db_labels)
  query_QxU, db_NxU = codes_lib.code_words(query_codes), codes_lib.code_words(db_codes)
  num_db, bits = len(db_NxU), 32 * db_NxU.shape[1]
  cut = num_db if topk is None else min(int(topk), num_db)
  max_grade = 1 if db_labels.ndim == 1 else db_labels.shape[1]
  step = _graded_step(cut, num_db, bits, max_grade)
  pad_label = 0 if db_labels.ndim == 2 else -1
  db_dev = (jax.device_put(codes_lib.pad_rows(db_NxU)),
            jax.device_put(codes_lib.pad_rows(db_labels, value=pad_label)))
  discount_prefix = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, num_db + 2)))])
  harmonic = ranking.harmonic(num_db)
  chunk = codes_lib.query_chunk_size(num_db, chunk_size)
  run = lambda start, stop: step(codes_lib.pad_chunk(query_QxU[start:stop], chunk),
                                 codes_lib.pad_chunk(query_labels[start:stop], chunk), *db_dev)
  parts: dict[str, list] = {}
  for start, stop, out in codes_lib.dispatch_ahead(run, len(query_QxU), chunk):
    out = {key: np.asarray(value)[:stop - start] for key, value in out.items()}
    for key, value in _chunk_metrics(out, cut, num_db, bits, modes, discount_prefix,
                                     harmonic).items():
      parts.setdefault(key, []).append(value)
  return {key: np.concatenate(value) for key, value in parts.items()}


def mean_ndcg(query_codes, db_codes, query_labels, db_labels, *, topk=None,
              ties: str = 'index', chunk_size: int | None = None) -> float:
  """NDCG@topk averaged over queries (see `graded_metrics`)."""
  return float(graded_metrics(query_codes, db_codes, query_labels, db_labels, topk=topk,
                              ties=ties, chunk_size=chunk_size)[f'ndcg:{ties}'].mean())


def mean_acg(query_codes, db_codes, query_labels, db_labels, *, topk=None,
             ties: str = 'index', chunk_size: int | None = None) -> float:
  """ACG@topk averaged over queries (see `graded_metrics`)."""
  return float(graded_metrics(query_codes, db_codes, query_labels, db_labels, topk=topk,
                              ties=ties, chunk_size=chunk_size)[f'acg:{ties}'].mean())
