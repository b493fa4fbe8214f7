"""Graded relevance over Hamming ranking: NDCG@k, ACG@k and weighted mAP (WAP@k, see
`hashjax.retrieval.weighted_ap`), with the tie orders of AP.

Conventions (fixed, as in `hashjax.retrieval.metrics`):

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

Everything runs in query chunks through the retrieval engine: the device computes distances
and grades (and, for index ties, the k nearest in index order); the host counts items per
(distance, grade) with numpy's bincount and evaluates every tie order from those counts.
`Graded` is these metrics as a measure of the engine, for passes shared with other metrics.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from hashjax.retrieval import engine, metrics, ranking, weighted_ap
from hashjax.retrieval.relevance import Labels, Relevance


@dataclasses.dataclass(eq=False)
class Graded:
  """A measure of `engine.measure`: NDCG@topk, ACG@topk and WAP@topk of a graded relevance
  (`relevance.Labels(graded=True)`) under tie orders. Per-query values (float64 [Q]):
  f'ndcg:{mode}', f'acg:{mode}', f'wap:{mode}'."""
  relevance: Relevance
  topk: int | None = None
  ties: tuple = ('index',)

  def _cut(self, num_items: int) -> int:
    return num_items if self.topk is None else min(int(self.topk), num_items)

  def tallies(self, num_items: int) -> engine.Tallies:
    cut, index = self._cut(num_items), 'index' in self.ties
    return engine.Tallies(nearest=cut if index and cut < num_items else 0, histogram=True,
                          ranking=index and cut == num_items)

  def values(self, chunk: engine.Chunk, r: int) -> dict[str, np.ndarray]:
    n, cut = chunk.num_items, self._cut(chunk.num_items)
    counts = chunk.counts(r)
    present = np.flatnonzero(counts.sum(axis=(0, 2)))
    grades = int(present.max()) + 1 if len(present) else 1  # the grades this chunk holds
    count_QxGxR = counts[:, :grades]
    gain_G = 2.0 ** np.arange(grades) - 1
    rel_G = np.arange(grades, dtype=np.float64)
    discount_prefix, harmonic = _discount_prefix(n), _harmonic(n)
    # The ideal ranking: every item in one group, best order.
    ideal = _group_sums(count_QxGxR.sum(axis=2, keepdims=True), gain_G, discount_prefix, cut,
                        'best')
    out = {}
    for mode in self.ties:
      if mode == 'index':
        if cut < n:
          grade = chunk.nearest_levels(r)[:, :cut]
        else:
          dist, level = chunk.ranking(r)
          grade = np.take_along_axis(level, ranking.order_by_distance(dist), axis=1)
        dcg = _ranked(2.0 ** grade - 1, np.diff(discount_prefix[:cut + 1]))
        acg = grade.sum(axis=1) / cut
        positive = grade > 0
        num_positive = positive.sum(axis=1)
        wap_sum = _ranked(positive * np.cumsum(grade, axis=1), 1.0 / np.arange(1, cut + 1))
        wap = np.where(num_positive > 0, wap_sum / np.maximum(num_positive, 1), 0.0)
      else:
        dcg = _group_sums(count_QxGxR, gain_G, discount_prefix, cut, mode)
        acg = _group_sums(count_QxGxR, rel_G, np.arange(n + 1.0), cut, mode) / cut
        wap = weighted_ap.weighted_ap(count_QxGxR, cut, harmonic, mode)
      out[f'wap:{mode}'] = wap
      out[f'ndcg:{mode}'] = np.where(ideal > 0, dcg / np.maximum(ideal, 1e-300), 0.0)
      out[f'acg:{mode}'] = acg
    return out


@functools.lru_cache(maxsize=8)
def _discount_prefix(n: int) -> np.ndarray:
  """prefix[p] = Σ_{i≤p} 1 / log2(i + 1), float64 [n + 1]."""
  return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, n + 2)))])


@functools.lru_cache(maxsize=8)
def _harmonic(n: int) -> np.ndarray:
  return ranking.harmonic(n)


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
    [0, 1], ACG and WAP (weighted mAP, `retrieval.weighted_ap`) in [0, L].
  """
  modes = metrics.check_modes(ties)
  metrics.check_cutoff(topk, 'topk')
  query_codes, db_codes, query_labels, db_labels = metrics.check_inputs(
      query_codes, db_codes, query_labels, db_labels)
  measure = Graded(Labels(query_labels, db_labels, graded=True), topk, modes)
  return engine.measure(query_codes, engine.Database.of(db_codes), {'graded': measure},
                        chunk_size=chunk_size)['graded']


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
