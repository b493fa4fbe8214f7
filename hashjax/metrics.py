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

Codes may be ±1 arrays [N, K] or packed uint8 [N, P] (see `hashjax.codes`).
Labels are int class ids [N] or multi-hot [N, L]. Everything runs jitted in query chunks of
`chunk_size`, so memory is O(chunk_size · N).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hashjax import codes as codes_lib
from hashjax import ranking
from hashjax import selection

TIES = ('index', 'best', 'worst', 'expected')


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


# ---------------------------------------------------------------------------------------------
# Device part: per query chunk, the relevance of the first max_topk ranks (ties by index)
# and/or the per-distance histograms of all and relevant items. Host part (float64): every
# metric from those.
# ---------------------------------------------------------------------------------------------


def _relevance_u8(query_labels, db_labels) -> jax.Array:
  if query_labels.ndim == 1:
    return (query_labels[:, None] == db_labels[None, :]).astype(jnp.uint8)
  inner = query_labels.astype(jnp.float32) @ db_labels.astype(jnp.float32).T
  return (inner > 0).astype(jnp.uint8)


def _set_mask(sets_QxR, num_rows: int) -> jax.Array:
  """uint8 [Q, N]: 1 at each query's listed database indices (−1 entries list nothing)."""
  rows_QxR = jnp.broadcast_to(jnp.arange(sets_QxR.shape[0])[:, None], sets_QxR.shape)
  cols_QxR = jnp.where(sets_QxR < 0, num_rows, sets_QxR)  # out of range: dropped
  return jnp.zeros((sets_QxR.shape[0], num_rows), jnp.uint8).at[rows_QxR, cols_QxR].set(
      1, mode='drop')


@functools.lru_cache(maxsize=None)
def _stats_step(max_topk: int, histogram: bool, full_index: bool, num_valid: int, bits: int,
                sets: bool = False):
  """Jitted chunk function (query words, query labels, db words, db labels) → dict of [Q, ...].
  With `sets`, the query labels are each query's relevant database indices [Q, R]."""

  def stats(dist_QxN, sample_QxS, query_labels, db_labels):
    valid_N = jnp.arange(dist_QxN.shape[1]) < num_valid
    rel_QxN = (_set_mask(query_labels, dist_QxN.shape[1]) if sets
               else _relevance_u8(query_labels, db_labels)) * valid_N.astype(jnp.uint8)
    out = {'num_relevant': selection.count_true(rel_QxN)}
    if max_topk:
      # The max_topk nearest in index order; the host orders them by distance.
      index_QxT = selection.nearest_in_index_order(dist_QxN, max_topk, bits, sample_QxS)
      out['topk_dist'] = jnp.take_along_axis(dist_QxN, index_QxT, axis=1)
      out['topk_rel'] = jnp.take_along_axis(rel_QxN, index_QxT, axis=1)
    if histogram or full_index:
      # The rest runs on the host: numpy's bincount and its radix argsort of small integers
      # cost ~1.2 and ~3.2 ns per pair on this project's 2-core CPU, XLA:CPU's scatter and
      # comparison sort (with the index as payload) ~4.3 and ~170 ns.
      clipped_QxN = jnp.minimum(dist_QxN, bits + 1)  # padding rows: bin bits + 1
    if histogram:
      key_dtype = jnp.uint16 if 2 * (bits + 2) <= 2**16 else jnp.int32
      out['key'] = (clipped_QxN.astype(key_dtype)
                    + (bits + 2) * rel_QxN.astype(key_dtype))
    if full_index:
      out['dist'], out['rel'] = clipped_QxN, rel_QxN
    return out

  return selection.distance_program(stats, num_valid, bits)


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


def _per_query(query_codes, db_codes, query_labels, db_labels, *, map_topks=(),
               precision_topks=(), ties=('index',), pr_curve=False, chunk_size=None,
               sets=False) -> dict[str, np.ndarray]:
  """Every requested per-query metric in one pass over the query chunks.

  Keys: f'ap@{topk}:{mode}' and f'p@{topk}:{mode}' (float64 [Q]; topk is the int or 'all'),
  'precision_R' and 'recall_R' (float64 [Q, R], R = bits + 1) when pr_curve. With `sets`,
  query_labels are relevant database indices [Q, R] (−1: none) and db_labels is ignored.
  """
  modes = check_modes(ties)
  for topk in map_topks:
    check_cutoff(topk, 'topk')
  for topk in precision_topks:
    if topk is None:
      raise ValueError('precision_topks needs integer cutoffs, got None')
    check_cutoff(topk, 'topk')
  query_codes, db_codes, query_labels, db_labels = check_inputs(
      query_codes, db_codes, query_labels, db_labels)
  query_QxU, db_NxU = codes_lib.code_words(query_codes), codes_lib.code_words(db_codes)
  num_db, bits = len(db_NxU), 32 * db_NxU.shape[1]
  curve_bits = codes_lib.code_bits(db_codes)
  cut = lambda topk: num_db if topk is None else min(int(topk), num_db)
  index_cuts = sorted({cut(topk) for topk in (*map_topks, *precision_topks)})
  max_topk = max([c for c in index_cuts if c < num_db] or [0]) if 'index' in modes else 0
  full_index = 'index' in modes and any(cut(topk) == num_db for topk in map_topks)
  histogram = pr_curve or any(mode != 'index' for mode in modes)
  step = _stats_step(max_topk, histogram, full_index, num_db, bits, sets)
  pad_label = 0 if db_labels.ndim == 2 else -1
  db_dev = (jax.device_put(codes_lib.pad_rows(db_NxU)),
            jax.device_put(codes_lib.pad_rows(db_labels, value=pad_label)))
  harmonic = ranking.harmonic(num_db) if histogram else None
  chunk = codes_lib.query_chunk_size(num_db, chunk_size)
  results: dict[str, list] = {}
  add = lambda key, value: results.setdefault(key, []).append(np.asarray(value, np.float64))
  run = lambda start, stop: step(codes_lib.pad_chunk(query_QxU[start:stop], chunk),
                                 codes_lib.pad_chunk(query_labels[start:stop], chunk), *db_dev)
  for start, stop, out in codes_lib.dispatch_ahead(run, len(query_QxU), chunk):
    out = {key: np.asarray(value)[:stop - start] for key, value in out.items()}
    if histogram:
      out['count'], out['relcount'] = ranking.histograms(out.pop('key'), bits)
    if 'topk_dist' in out:
      order_QxT = ranking.order_by_distance(out.pop('topk_dist'))
      out['rel_topk'] = np.take_along_axis(out.pop('topk_rel'), order_QxT, axis=1)
    if full_index:
      out['ap_full'] = ranking.full_index_ap(out.pop('dist')[:, :num_db],
                                             out.pop('rel')[:, :num_db])
    num_relevant = out['num_relevant'].astype(np.float64)
    # Every tie mode of one cutoff from one call (its hypergeometric terms dominate).
    tie_aware = functools.lru_cache(maxsize=None)(lambda cutoff: ranking.tie_aware(
        out['count'], out['relcount'], cutoff, harmonic))
    for topk in map_topks:
      name = 'all' if topk is None else int(topk)
      for mode in modes:
        if mode == 'index':
          ap = (out['ap_full'] if cut(topk) == num_db
                else ranked_average_precision(out['rel_topk'], cut(topk)))
          add(f'ap@{name}:index', ap)
        else:
          add(f'ap@{name}:{mode}', tie_aware(cut(topk))[f'ap_{mode}'])
    for topk in precision_topks:
      for mode in modes:
        if cut(topk) == num_db:
          add(f'p@{int(topk)}:{mode}', num_relevant / num_db)
        elif mode == 'index':
          add(f'p@{int(topk)}:index', out['rel_topk'][:, :cut(topk)].sum(1) / cut(topk))
        else:
          add(f'p@{int(topk)}:{mode}', tie_aware(cut(topk))[f'p_{mode}'])
    if pr_curve:
      retrieved = np.cumsum(out['count'], axis=1)[:, :curve_bits + 1].astype(np.float64)
      hits = np.cumsum(out['relcount'], axis=1)[:, :curve_bits + 1].astype(np.float64)
      add('precision_R', np.where(retrieved > 0, hits / np.maximum(retrieved, 1), 0.0))
      add('recall_R', np.where(num_relevant[:, None] > 0,
                               hits / np.maximum(num_relevant[:, None], 1), 0.0))
  return {key: np.concatenate(parts) for key, parts in results.items()}


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
  return _per_query(query_codes, db_codes, query_labels, db_labels, map_topks=(topk,),
                    ties=(ties,), chunk_size=chunk_size)[f'ap@{name}:{ties}']


def average_precision_of_sets(query_codes, db_codes, relevant_sets, *, topk=None,
                              ties: str = 'index', chunk_size: int | None = None) -> np.ndarray:
  """Per-query AP@topk when each query's relevant items are given as database indices (e.g.
  its nearest neighbours in a reference space: `hashjax.neighbours.neighbour_sets`).

  Args:
    query_codes: [Q, K] ±1 or packed uint8. db_codes: [N, K] of the same kind.
    relevant_sets: int [Q, R], database indices in 0..N−1; −1 pads rows with fewer.
    topk, ties, chunk_size: as in `average_precision`.

  Returns:
    float64 numpy array [Q] of AP values in [0, 1].
  """
  check_modes(ties)
  check_cutoff(topk, 'topk')
  sets = np.asarray(relevant_sets)
  num_db = len(np.asarray(db_codes))
  if (sets.ndim != 2 or len(sets) != len(np.asarray(query_codes))
      or not np.issubdtype(sets.dtype, np.integer)):
    raise ValueError(f'relevant_sets must be int [Q, R] (database indices per query); got '
                     f'{sets.dtype} {sets.shape}')
  if np.any((sets < -1) | (sets >= num_db)):
    raise ValueError(f'relevant index {int(sets[(sets < -1) | (sets >= num_db)][0])} is '
                     f'outside the database (0..{num_db - 1}, or -1 for none)')
  name = 'all' if topk is None else int(topk)
  return _per_query(query_codes, db_codes, sets.astype(np.int32),
                    np.zeros((num_db, 1), np.int32), map_topks=(topk,),
                    ties=(ties,), chunk_size=chunk_size, sets=True)[f'ap@{name}:{ties}']


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
  values = _per_query(query_codes, db_codes, query_labels, db_labels,
                      precision_topks=tuple(topks), ties=(ties,), chunk_size=chunk_size)
  return np.array([values[f'p@{int(topk)}:{ties}'].mean() for topk in topks])


def precision_recall_curve(query_codes, db_codes, query_labels, db_labels, *,
                           chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Mean precision and recall within Hamming radius r for every r = 0..bits, one pass.

  Returns:
    (precision [R], recall [R]) float64, R = bits + 1; entry r equals `precision_at_radius` /
    `recall_at_radius` with radius=r (empty ball: precision 0). bits is K for ±1 codes and
    8·P for packed codes.
  """
  values = _per_query(query_codes, db_codes, query_labels, db_labels, pr_curve=True,
                      chunk_size=chunk_size)
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
  values = _per_query(query_codes, db_codes, query_labels, db_labels,
                      map_topks=tuple(map_topks), precision_topks=tuple(precision_topks),
                      ties=modes, pr_curve=pr_curve, chunk_size=chunk_size)
  suffix = lambda mode: '' if mode == 'index' else f'_{mode}'
  report = {}
  for topk in map_topks:
    name = 'all' if topk is None else int(topk)
    for mode in modes:
      report[f'map@{name}{suffix(mode)}'] = float(values[f'ap@{name}:{mode}'].mean())
  for topk in precision_topks:
    name = int(topk)
    for mode in modes:
      report[f'precision@{name}{suffix(mode)}'] = float(values[f'p@{name}:{mode}'].mean())
  if pr_curve:
    report['pr_precision'] = values['precision_R'].mean(0).tolist()
    report['pr_recall'] = values['recall_R'].mean(0).tolist()
  return report


def map_tie_summary(query_codes, db_codes, query_labels, db_labels, *, topk=None,
                    chunk_size: int | None = None) -> dict:
  """For eval.json: {'map' (index ties), 'map_interval' [worst, best], 'map_expected'}.

  All at cutoff `topk` from a single pass; worst ≤ expected ≤ best always holds, and the
  width of the interval shows how much the tie order alone can move the number.
  """
  values = _per_query(query_codes, db_codes, query_labels, db_labels, map_topks=(topk,),
                      ties=TIES, chunk_size=chunk_size)
  name = 'all' if topk is None else int(topk)
  mean = lambda mode: float(values[f'ap@{name}:{mode}'].mean())
  return {'map': mean('index'), 'map_interval': [mean('worst'), mean('best')],
          'map_expected': mean('expected')}


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
