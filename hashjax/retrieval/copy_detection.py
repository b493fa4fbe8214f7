"""Copy detection over Hamming ranking: each query has exactly one relevant database item.

A query is a transformed image (a crop, a rotation, a quantised or occluded copy) and its one
relevant item is the original, `targets[q]`; the rest of the database are distractors. No
labels are involved. With c items strictly closer than the original and n items at its
distance (the original included, i of them before it in database order):

* 'index' ties: rank = c + i + 1; 'best': c + 1; 'worst': c + n;
* 'expected' (uniformly random order of the n tied items): E[1/rank] = (H[c + n] − H[c]) / n
  and P(rank ≤ k) = clip((k − c) / n, 0, 1), with H the harmonic numbers.

AP of a query is 1/rank (one relevant item); mAP is its mean, recall@k the share of queries
whose original ranks in the first k. The three counts are the engine's `first_relevant` tally
of the one-item relevance `IndexSets(targets[:, None])`; `FirstHit` is this score as a
measure of the engine.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from hashjax.retrieval import engine, metrics, ranking
from hashjax.retrieval.relevance import IndexSets, Relevance


@dataclasses.dataclass(eq=False)
class FirstHit:
  """A measure of `engine.measure`: the rank of each query's first relevant item under a tie
  order. Per-query values (float64 [Q]): 'inverse_rank' (its AP with one relevant item) and
  f'hit@{k}' (1 when it ranks in the first k; the probability for 'expected')."""
  relevance: Relevance
  ties: str = 'index'
  topks: tuple = (1, 10)

  def tallies(self, num_items: int) -> engine.Tallies:
    del num_items
    return engine.Tallies(first_relevant=True)

  def values(self, chunk: engine.Chunk, r: int) -> dict[str, np.ndarray]:
    closer, tied, before = chunk.first_relevant(r)
    if self.ties == 'expected':
      harmonic = _harmonic(chunk.num_items)
      inverse_rank = (harmonic[closer + tied] - harmonic[closer]) / tied
      hit = lambda k: np.clip((k - closer) / tied, 0.0, 1.0)  # noqa: E731
    else:
      rank = {'index': closer + before + 1, 'best': closer + 1,
              'worst': closer + tied}[self.ties]
      inverse_rank = 1.0 / rank
      hit = lambda k: (rank <= k).astype(np.float64)  # noqa: E731
    return {'inverse_rank': inverse_rank, **{f'hit@{int(k)}': hit(int(k))
                                             for k in self.topks}}


@functools.lru_cache(maxsize=8)
def _harmonic(n: int) -> np.ndarray:
  return ranking.harmonic(n)


def _check_targets(targets, num_query: int, num_database: int) -> np.ndarray:
  targets = np.asarray(targets)
  if targets.shape != (num_query,) or not np.issubdtype(targets.dtype, np.integer):
    raise ValueError(f'targets must be one database index per query, int [{num_query}]; got '
                     f'{targets.dtype} {targets.shape}')
  bad = (targets < 0) | (targets >= num_database)
  if np.any(bad):
    raise ValueError(f'target {int(targets[bad][0])} is outside the database '
                     f'(0..{num_database - 1})')
  return targets.astype(np.int32)


def copy_detection(query_codes, db_codes, targets, *, ties: str = 'index',
                   topks=(1, 10), chunk_size: int | None = None) -> dict[str, float]:
  """mAP and recall@k of copy detection (see the module docstring).

  Args:
    query_codes: [Q, K] ±1 or packed uint8 (the transformed copies).
    db_codes: [N, K] of the same kind (originals and distractors).
    targets: int [Q], the database index of each query's original.
    ties: 'index', 'best', 'worst' or 'expected'.
    topks: the cutoffs k of recall@k (positive integers).
    chunk_size: queries evaluated at once (default: ~2**24 query·item pairs per device).

  Returns:
    {'map@all': float, f'recall@{k}': float for each k}, each in [0, 1].
  """
  (mode,) = metrics.check_modes(ties)
  for k in topks:
    if k is None:
      raise ValueError('topks needs integer cutoffs, got None')
    metrics.check_cutoff(k, 'topks')
  query_codes, db_codes = metrics.check_codes(query_codes, db_codes)
  targets = _check_targets(targets, len(query_codes), len(db_codes))
  if not len(query_codes):
    return {'map@all': 0.0, **{f'recall@{int(k)}': 0.0 for k in topks}}
  measure = FirstHit(IndexSets(targets[:, None]), mode, tuple(topks))
  values = engine.measure(query_codes, engine.Database.of(db_codes), {'copies': measure},
                          chunk_size=chunk_size)['copies']
  return {'map@all': float(np.mean(values['inverse_rank'])),
          **{f'recall@{int(k)}': float(np.mean(values[f'hit@{int(k)}'])) for k in topks}}
