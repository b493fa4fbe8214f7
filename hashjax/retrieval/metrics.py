"""Retrieval metrics over Hamming ranking.

Conventions (they change published numbers, so they are fixed and documented here):

* Relevance: a database item is relevant to a query when they share at least one label
  (equal class ids, or y_q·y_i > 0 for multi-hot labels).
* Ranking: ascending Hamming distance. With `ties='index'` (the default) equal distances are
  ordered by database index, so the result is deterministic. (Common research code breaks
  ties with an unstable sort, i.e. arbitrarily.)
* AP@topk = (1/m) Σ_{t≤topk} P@t · rel_t, with m the number of relevant items among the first
  topk ranks. A query with m = 0 scores 0 and still counts in the mean (DeepHash-pytorch's
  convention; the HashNet PyTorch test drops such queries instead, which gives higher numbers).
* Precision within Hamming radius r: relevant / retrieved among items at distance ≤ r; an
  empty Hamming ball counts as precision 0 (thulab/DeepHash's convention). Recall within
  radius r: relevant retrieved / relevant in the database; 0 for a query with none.

Codes may be ±1 arrays [N, K] or packed uint8 [N, P] (see `retrieval.codes`).
Labels are int class ids [N] or multi-hot [N, L]. Everything runs in query chunks of
`chunk_size` through the retrieval engine (`retrieval.engine`), so memory is O(chunk_size · N);
`Ranked` is these metrics as a measure of the engine, for passes shared with other metrics.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from hashjax.retrieval import codes as codes_lib
from hashjax.retrieval import engine, ranking
from hashjax.retrieval.relevance import IndexSets, Labels, Relevance

TIES = ('index', 'best', 'worst', 'expected')


def metric_key(name: str, topk, suffix: str | None = None) -> str:
  """The one spelling of a metric at a cutoff: ('map', 100) → 'map@100', ('map', None) →
  'map@all', with a suffix (a tie order other than 'index', 'interval', ...) →
  'map@100_expected'."""
  key = f'{name}@{"all" if topk is None else int(topk)}'
  return key if suffix in (None, 'index') else f'{key}_{suffix}'


def check_codes(query_codes, db_codes):
  """The two code arrays as numpy, or a one-line ValueError: [Q, K] and [N, K]."""
  query_codes, db_codes = np.asarray(query_codes), np.asarray(db_codes)
  if query_codes.ndim != 2 or db_codes.ndim != 2 or query_codes.shape[1] != db_codes.shape[1]:
    raise ValueError('codes must be [Q, K] and [N, K] with the same K; got shapes '
                     f'{query_codes.shape} and {db_codes.shape}')
  return query_codes, db_codes


def check_inputs(query_codes, db_codes, query_labels, db_labels):
  """The four arrays as numpy, or a one-line ValueError: codes [Q, K] and [N, K], labels [Q]
  and [N] (class ids) or [Q, L] and [N, L] (multi-hot)."""
  query_codes, db_codes = check_codes(query_codes, db_codes)
  query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
  if len(query_labels) != len(query_codes) or len(db_labels) != len(db_codes):
    raise ValueError(f'{len(query_codes)} query codes but {len(query_labels)} query labels, '
                     f'{len(db_codes)} database codes but {len(db_labels)} database labels')
  if query_labels.ndim != db_labels.ndim or query_labels.ndim not in (1, 2):
    raise ValueError('labels must both be class ids [N] or both multi-hot [N, L]; got shapes '
                     f'{query_labels.shape} and {db_labels.shape}')
  return query_codes, db_codes, query_labels, db_labels


def check_modes(ties) -> tuple[str, ...]:
  """A tie order or a sequence of them as a tuple; one-line ValueError naming an unknown one."""
  modes = (ties,) if isinstance(ties, str) else tuple(ties)
  for mode in modes:
    if mode not in TIES:
      raise ValueError(f'unknown ties mode {mode!r}; accepted: {", ".join(TIES)}')
  return modes


def check_cutoff(value, what: str):
  """One-line ValueError unless `value` is a positive integer or None."""
  if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
    raise ValueError(f'{what}={value!r} must be a positive integer or None (whole database)')


def ranked_average_precision(rel_QxT: np.ndarray, topk: int) -> np.ndarray:
  """AP@topk float64 [Q] from the relevance of each query's ranked items [Q, ≥topk] (bool or
  0/1), by the module's conventions; 0 for a query with no relevant item in its first topk."""
  rel = np.asarray(rel_QxT)[:, :topk]
  rel_hits = np.cumsum(rel, axis=1, dtype=np.int32)
  rel_hits *= rel  # hits@rank at the relevant ranks, 0 elsewhere
  num = rel_hits.max(axis=1)  # hits grow with the rank: the last relevant rank's
  # einsum, not @: BLAS threads would spin against the device's threads.
  ap_sum = np.einsum('qt,t->q', rel_hits.astype(np.float64), 1.0 / np.arange(1, topk + 1))
  return np.where(num > 0, ap_sum / np.maximum(num, 1), 0.0)


@dataclasses.dataclass(eq=False)
class Ranked:
  """A measure of `engine.measure`: AP@topk and precision@topk under tie orders and the
  precision–recall curve over Hamming radii, for one binary relevance.

  Per-query values (float64 [Q]): f'ap@{topk}:{mode}' and f'p@{topk}:{mode}' (topk the int,
  or 'all' for None); 'precision_R' and 'recall_R' [Q, R] (R = curve_bits + 1) with pr_curve.
  """
  relevance: Relevance
  map_topks: tuple = ()
  precision_topks: tuple = ()
  ties: tuple = ('index',)
  pr_curve: bool = False
  curve_bits: int = 0  # the PR curve's radii 0..curve_bits: the codes' bits (K, or 8·P)

  def _cut(self, topk, num_items: int) -> int:
    return num_items if topk is None else min(int(topk), num_items)

  def tallies(self, num_items: int) -> engine.Tallies:
    cuts = {self._cut(t, num_items) for t in (*self.map_topks, *self.precision_topks)}
    index = 'index' in self.ties
    histogram = self.pr_curve or any(mode != 'index' for mode in self.ties)
    return engine.Tallies(
        nearest=max([c for c in cuts if c < num_items] or [0]) if index else 0,
        histogram=histogram,
        ranking=index and any(self._cut(t, num_items) == num_items for t in self.map_topks),
        relevant=not histogram and any(self._cut(t, num_items) == num_items
                                       for t in self.precision_topks))

  def values(self, chunk: engine.Chunk, r: int) -> dict[str, np.ndarray]:
    n, out = chunk.num_items, {}
    histogram = self.pr_curve or any(mode != 'index' for mode in self.ties)
    if histogram:
      counts = chunk.counts(r)
      count, relcount = counts.sum(axis=1), counts[:, 1]
      harmonic = _harmonic(n)
    num_relevant = lambda: chunk.relevant(r).astype(np.float64)  # noqa: E731
    # Every tie mode of one cutoff from one call (its hypergeometric terms dominate).
    tie_aware = functools.lru_cache(maxsize=None)(
        lambda cutoff: ranking.tie_aware(count, relcount, cutoff, harmonic))
    for topk in self.map_topks:
      name, cut = 'all' if topk is None else int(topk), self._cut(topk, n)
      for mode in self.ties:
        if mode != 'index':
          out[f'ap@{name}:{mode}'] = tie_aware(cut)[f'ap_{mode}']
        elif cut == n:
          out[f'ap@{name}:index'] = ranking.full_index_ap(*chunk.ranking(r))
        else:
          out[f'ap@{name}:index'] = ranked_average_precision(chunk.nearest_levels(r), cut)
    for topk in self.precision_topks:
      cut = self._cut(topk, n)
      for mode in self.ties:
        if cut == n:
          out[f'p@{int(topk)}:{mode}'] = num_relevant() / n
        elif mode == 'index':
          out[f'p@{int(topk)}:index'] = chunk.nearest_levels(r)[:, :cut].sum(1) / cut
        else:
          out[f'p@{int(topk)}:{mode}'] = tie_aware(cut)[f'p_{mode}']
    if self.pr_curve:
      k = self.curve_bits
      retrieved = np.cumsum(count, axis=1)[:, :k + 1].astype(np.float64)
      hits = np.cumsum(relcount, axis=1)[:, :k + 1].astype(np.float64)
      out['precision_R'] = np.where(retrieved > 0, hits / np.maximum(retrieved, 1), 0.0)
      relevant = num_relevant()[:, None]
      out['recall_R'] = np.where(relevant > 0, hits / np.maximum(relevant, 1), 0.0)
    return out


@functools.lru_cache(maxsize=8)
def _harmonic(n: int) -> np.ndarray:
  return ranking.harmonic(n)


def _per_query(query_codes, db_codes, relevance: Relevance, *, map_topks=(),
               precision_topks=(), ties=('index',), pr_curve=False,
               chunk_size=None) -> dict[str, np.ndarray]:
  """Every requested per-query metric (`Ranked`'s values) in one pass over the query
  chunks; checks the cutoffs and tie orders first."""
  modes = check_modes(ties)
  for topk in map_topks:
    check_cutoff(topk, 'topk')
  for topk in precision_topks:
    if topk is None:
      raise ValueError('precision_topks needs integer cutoffs, got None')
    check_cutoff(topk, 'topk')
  measure = Ranked(relevance, tuple(map_topks), tuple(precision_topks), modes, pr_curve,
                   codes_lib.code_bits(db_codes))
  database = engine.Database.of(db_codes)
  return engine.measure(query_codes, database, {'ranked': measure},
                        chunk_size=chunk_size)['ranked']


def _labels(query_codes, db_codes, query_labels, db_labels) -> tuple:
  query_codes, db_codes, query_labels, db_labels = check_inputs(query_codes, db_codes,
                                                                query_labels, db_labels)
  return query_codes, db_codes, Labels(query_labels, db_labels)


def average_precision(query_codes, db_codes, query_labels, db_labels, *, topk=None,
                      ties: str = 'index', chunk_size: int | None = None) -> np.ndarray:
  """Per-query AP@topk over Hamming ranking (see the module docstring for conventions).

  Args:
    query_codes: [Q, K] ±1 or packed uint8. db_codes: [N, K] of the same kind.
    query_labels, db_labels: class ids [Q], [N] or multi-hot [Q, L], [N, L].
    topk: the cutoff: AP over the first topk ranks (None or ≥ N: the whole database).
    ties: how equal distances are ordered: 'index', 'best', 'worst' or 'expected'.
    chunk_size: queries evaluated at once (default: ~2**24 query·item pairs per device).

  Returns:
    float64 numpy array [Q] of AP values in [0, 1].
  """
  check_modes(ties)
  check_cutoff(topk, 'topk')
  name = 'all' if topk is None else int(topk)
  query_codes, db_codes, relevance = _labels(query_codes, db_codes, query_labels, db_labels)
  return _per_query(query_codes, db_codes, relevance, map_topks=(topk,), ties=(ties,),
                    chunk_size=chunk_size)[f'ap@{name}:{ties}']


def average_precision_of_sets(query_codes, db_codes, relevant_sets, *, topk=None,
                              ties: str = 'index', chunk_size: int | None = None) -> np.ndarray:
  """Per-query AP@topk when each query's relevant items are given as database indices (e.g.
  its nearest neighbours in a reference space: `retrieval.neighbours.neighbour_sets`).

  Args:
    query_codes: [Q, K] ±1 or packed uint8. db_codes: [N, K] of the same kind.
    relevant_sets: int [Q, R], database indices in 0..N−1; −1 pads rows with fewer.
    topk, ties, chunk_size: as in `average_precision`.

  Returns:
    float64 numpy array [Q] of AP values in [0, 1].
  """
  check_modes(ties)
  check_cutoff(topk, 'topk')
  query_codes, db_codes = check_codes(query_codes, db_codes)
  sets = np.asarray(relevant_sets)
  num_database = len(db_codes)
  if (sets.ndim != 2 or len(sets) != len(np.asarray(query_codes))
      or not np.issubdtype(sets.dtype, np.integer)):
    raise ValueError(f'relevant_sets must be int [Q, R] (database indices per query); got '
                     f'{sets.dtype} {sets.shape}')
  if np.any((sets < -1) | (sets >= num_database)):
    raise ValueError(f'relevant index {int(sets[(sets < -1) | (sets >= num_database)][0])} is '
                     f'outside the database (0..{num_database - 1}, or -1 for none)')
  name = 'all' if topk is None else int(topk)
  return _per_query(query_codes, db_codes, IndexSets(sets), map_topks=(topk,), ties=(ties,),
                    chunk_size=chunk_size)[f'ap@{name}:{ties}']


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, *, topk=None,
                           ties: str = 'index', chunk_size: int | None = None) -> float:
  """mAP@topk: the mean over all queries of `average_precision` (same arguments).

  Example:
    >>> q = np.array([[1, 1], [-1, -1]]); db = np.array([[1, 1], [1, -1], [-1, -1]])
    >>> mean_average_precision(q, db, np.array([0, 1]), np.array([0, 0, 1]))
    1.0
  """
  return float(np.mean(average_precision(query_codes, db_codes, query_labels, db_labels,
                                         topk=topk, ties=ties, chunk_size=chunk_size)))


def precision_at_topk(query_codes, db_codes, query_labels, db_labels, *, topks=(10, 100),
                      ties: str = 'index', chunk_size: int | None = None) -> np.ndarray:
  """Mean precision of the first topk ranks, for each topk in `topks`; float64 [len(topks)].

  topk ≥ N gives the fraction of relevant items in the database.
  """
  query_codes, db_codes, relevance = _labels(query_codes, db_codes, query_labels, db_labels)
  values = _per_query(query_codes, db_codes, relevance, precision_topks=tuple(topks),
                      ties=(ties,), chunk_size=chunk_size)
  return np.array([values[f'p@{int(topk)}:{ties}'].mean() for topk in topks])


def precision_recall_curve(query_codes, db_codes, query_labels, db_labels, *,
                           chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Mean precision and recall within Hamming radius r for every r = 0..bits, one pass.

  Returns:
    (precision [R], recall [R]) float64, R = bits + 1; entry r equals `precision_at_radius` /
    `recall_at_radius` with radius=r (empty ball: precision 0). bits is K for ±1 codes and
    8·P for packed codes.
  """
  query_codes, db_codes, relevance = _labels(query_codes, db_codes, query_labels, db_labels)
  values = _per_query(query_codes, db_codes, relevance, pr_curve=True, chunk_size=chunk_size)
  return values['precision_R'].mean(0), values['recall_R'].mean(0)


def retrieval_report(query_codes, db_codes, query_labels, db_labels, *, map_topks=(None,),
                     precision_topks=(), ties=('index',), pr_curve: bool = False,
                     chunk_size: int | None = None) -> dict:
  """Several metrics in one pass; a flat JSON-ready dict.

  Keys: f'map@{topk}' for each of `map_topks` (topk an int, or 'all' for None) and
  f'precision@{topk}' for each of `precision_topks`, each suffixed with '_<mode>' for ties
  modes other than 'index'; 'pr_precision' and 'pr_recall' (lists of bits + 1 floats) when
  pr_curve.

  Example: retrieval_report(q, db, ql, dl, map_topks=(100, 1000, None),
  precision_topks=(10, 100), ties=('index', 'expected'))
  """
  modes = check_modes(ties)
  query_codes, db_codes, relevance = _labels(query_codes, db_codes, query_labels, db_labels)
  values = _per_query(query_codes, db_codes, relevance, map_topks=tuple(map_topks),
                      precision_topks=tuple(precision_topks), ties=modes, pr_curve=pr_curve,
                      chunk_size=chunk_size)
  report = {}
  for topk in map_topks:
    name = 'all' if topk is None else int(topk)
    for mode in modes:
      report[metric_key('map', topk, mode)] = float(values[f'ap@{name}:{mode}'].mean())
  for topk in precision_topks:
    name = int(topk)
    for mode in modes:
      report[metric_key('precision', topk, mode)] = float(values[f'p@{name}:{mode}'].mean())
  if pr_curve:
    report['pr_precision'] = values['precision_R'].mean(0).tolist()
    report['pr_recall'] = values['recall_R'].mean(0).tolist()
  return report


def map_tie_summary(query_codes, db_codes, query_labels, db_labels, *, topk=None,
                    chunk_size: int | None = None) -> dict:
  """mAP@topk under the tie orders, for eval.json: {'map@T' (index ties), 'map@T_interval'
  [worst, best], 'map@T_expected'} (T the cutoff, or 'all').

  All from a single pass; worst ≤ expected ≤ best always holds, and the width of the
  interval shows how much the tie order alone can move the number.
  """
  query_codes, db_codes, relevance = _labels(query_codes, db_codes, query_labels, db_labels)
  values = _per_query(query_codes, db_codes, relevance, map_topks=(topk,), ties=TIES,
                      chunk_size=chunk_size)
  name = 'all' if topk is None else int(topk)
  mean = lambda mode: float(values[f'ap@{name}:{mode}'].mean())  # noqa: E731
  return {metric_key('map', topk): mean('index'),
          metric_key('map', topk, 'interval'): [mean('worst'), mean('best')],
          metric_key('map', topk, 'expected'): mean('expected')}


def _radius_metrics(query_codes, db_codes, query_labels, db_labels, radius, chunk_size):
  if not isinstance(radius, (int, np.integer)) or radius < 0:
    raise ValueError(f'radius={radius!r} must be a non-negative integer number of bits')
  precision_R, recall_R = precision_recall_curve(query_codes, db_codes, query_labels,
                                                 db_labels, chunk_size=chunk_size)
  r = min(int(radius), len(precision_R) - 1)  # a ball wider than the code holds everything
  return float(precision_R[r]), float(recall_R[r])


def precision_at_radius(query_codes, db_codes, query_labels, db_labels, *, radius: int = 2,
                        chunk_size: int | None = None) -> float:
  """Mean precision of the Hamming ball of `radius` bits around each query.

  Args as in `average_precision`. An empty ball counts as precision 0.

  Returns:
    float in [0, 1].
  """
  return _radius_metrics(query_codes, db_codes, query_labels, db_labels, radius, chunk_size)[0]


def recall_at_radius(query_codes, db_codes, query_labels, db_labels, *, radius: int = 2,
                     chunk_size: int | None = None) -> float:
  """Mean recall of the Hamming ball of `radius` bits (relevant retrieved / relevant)."""
  return _radius_metrics(query_codes, db_codes, query_labels, db_labels, radius, chunk_size)[1]


def inner_product_map(query_h_QxK, db_h_NxK, query_labels, db_labels, *, topk=None,
                      chunk_size: int = 256) -> float:
  """mAP@topk ranking the database by −⟨h_q, h_i⟩ of real-valued codes (e.g. tanh(β z), no
  sign), ties by database index; the AP convention of the Hamming metrics above.

  On ±1 codes it equals `mean_average_precision` (−⟨b_q, b_i⟩ = 2·Hamming − K).
  """
  check_cutoff(topk, 'topk')
  query_h_QxK, db_h_NxK, query_labels, db_labels = check_inputs(
      query_h_QxK, db_h_NxK, query_labels, db_labels)
  q, db = query_h_QxK.astype(np.float32), db_h_NxK.astype(np.float32)
  cut = len(db) if topk is None else min(int(topk), len(db))
  aps = []
  for start in range(0, len(q), chunk_size):
    stop = start + chunk_size
    order_QxT = np.argsort(-(q[start:stop] @ db.T), axis=1, kind='stable')[:, :cut]
    ranked = db_labels[order_QxT]
    if ranked.ndim == 2:
      rel_QxT = query_labels[start:stop, None] == ranked
    else:
      rel_QxT = (query_labels[start:stop, None, :] * ranked).sum(-1) > 0
    aps.append(ranked_average_precision(rel_QxT, cut))
  return float(np.concatenate(aps).mean())
