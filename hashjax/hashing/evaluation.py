"""A hashing run's evaluation, the one place its eval.json rows are assembled: queries and
database encoded and binarised, then one pass of the retrieval engine per query set scores
every metric asked for from the same distances.

* always: mAP at `map_topk` (None: the whole database) under every tie order, and precision
  and recall within Hamming radius 2, against class labels (or shared multi-hot labels);
* `eval_extra` adds, in the same pass:
  - `ndcg`: graded relevance (multi-hot labels): NDCG, ACG and weighted mAP at `map_topk`,
    with index ties, NDCG's [worst, best] interval and the expected values;
  - `neighbours`: the unsupervised protocol: each query's relevant items are its 1 % nearest
    database items in pixel space (`retrieval.neighbours`); mAP by index and expected ties;
  - `copies`, in a pass of its own (other queries, a larger database): copy detection
    without labels: every query image transformed (`augment.copies`: a stronger crop than
    training's, rotation, quantisation, occlusion; the same copies at every evaluation) and
    searched for among the database plus the query originals; mAP, recall@1 and recall@10
    by index and expected ties.
* an update (`evaluate_update`): every query against the database re-encoded and with the
  indexed items keeping their stored codes, per query group (all, old classes, new classes).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from hashjax.data import base as data_base
from hashjax.data.base import ArraySource, Source
from hashjax.data.split import Split
from hashjax.hashing import augment, encoding, priors
from hashjax.hashing.config import HashConfig, parse_eval_extra
from hashjax.retrieval import codes as codes_lib
from hashjax.retrieval import copy_detection, engine, graded, metrics, neighbours
from hashjax.retrieval.metrics import metric_key as key
from hashjax.retrieval.relevance import IndexSets, Labels

NEIGHBOUR_FRACTION = 0.01  # relevant: the 1 % nearest database items in pixel space
RADIUS = 2  # precision_at_radius_2, recall_at_radius_2


def sign_encode(state, source: Source, indices: np.ndarray, cfg: HashConfig,
                mesh: Mesh | None = None) -> np.ndarray:
  """±1 codes int8 [len(indices), K] of source items under the model in `state`."""
  return np.asarray(codes_lib.sign_codes(
      encoding.encode(state, source, indices, cfg.eval_batch_size, mesh)))


def _mean(values: np.ndarray, mask: np.ndarray | None = None) -> float:
  return float((values if mask is None else values[mask]).mean())


def evaluate(state, cfg: HashConfig, source: Source, split: Split, mesh: Mesh | None = None,
             extra_cache: dict | None = None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Encodes queries and database, binarises with sign, and scores them (`score`, with
  `cfg.eval_extra`; `extra_cache`: a dict kept across the evaluations of one run, which then
  computes the neighbour sets and the copies once).

  Returns:
    (results, codes): results is eval.json's row: step, `score`'s entries, bits, num_query,
    num_database; codes holds the ±1 query and database codes.
  """
  query_codes = sign_encode(state, source, split.query, cfg, mesh)
  db_codes = sign_encode(state, source, split.database, cfg, mesh)
  encode = lambda src, idx: encoding.encode(state, src, idx, cfg.eval_batch_size, mesh)  # noqa: E731
  scores = score(query_codes, db_codes, source, split, topk=cfg.map_topk, bits=cfg.bits,
                 extra=parse_eval_extra(cfg.eval_extra), encode=encode, seed=cfg.seed,
                 cache=extra_cache)
  return ({'step': int(state.step), **scores, 'bits': cfg.bits, 'num_query': len(split.query),
           'num_database': len(split.database)},
          {'query': query_codes, 'database': db_codes})


def score(query_codes, db_codes, source: Source, split: Split, *, topk: int | None,
          bits: int, extra: tuple[str, ...] = (), extra_topk: int | None = ...,
          encode: Callable | None = None, seed: int = 0,
          cache: dict | None = None) -> dict[str, Any]:
  """The metrics of the module docstring for ±1 codes [Q, K] and [N, K] of the split's
  queries and database, one engine pass for all but the copies.

  Args:
    topk: the class-label mAP's cutoff (None: the whole database). bits: K.
    extra: of 'ndcg', 'neighbours', 'copies'. extra_topk: their cutoff (default: topk).
    encode: (source, indices) → hash-layer outputs z [len(indices), K], for the copies.
    seed: draws the copies. cache: kept across calls of one run (neighbour sets, copies).

  Returns:
    map@T (ties by index; T = topk, or 'all'), map@T_interval [worst, best],
    map@T_expected, map_topk, precision@radius2, recall@radius2, and each extra's entries
    (`eval_keys`).
  """
  cache = {} if cache is None else cache
  extra_topk = topk if extra_topk is ... else extra_topk
  ql, dl = source.labels[split.query], source.labels[split.database]
  measures = {'labels': metrics.Ranked(Labels(ql, dl), (topk,), (), metrics.TIES, True, bits)}
  if 'ndcg' in extra:
    measures['ndcg'] = graded.Graded(Labels(ql, dl, graded=True), extra_topk, metrics.TIES)
  if 'neighbours' in extra:
    measures['neighbours'] = metrics.Ranked(IndexSets(_neighbour_sets(source, split, cache)),
                                            (extra_topk,), (), ('index', 'expected'))
  values = engine.measure(query_codes, engine.Database.of(db_codes), measures)
  name = 'all' if topk is None else topk
  ap = lambda mode: _mean(values['labels'][f'ap@{name}:{mode}'])  # noqa: E731
  radius = min(RADIUS, bits)
  out = {key('map', topk): ap('index'), key('map', topk, 'interval'): [ap('worst'), ap('best')],
         key('map', topk, 'expected'): ap('expected'), 'map_topk': topk,
         f'precision@radius{RADIUS}': _mean(values['labels']['precision_R'][:, radius]),
         f'recall@radius{RADIUS}': _mean(values['labels']['recall_R'][:, radius])}
  if 'ndcg' in extra:
    v = {k: _mean(value) for k, value in values['ndcg'].items()}
    out.update({key('ndcg', extra_topk): v['ndcg:index'],
                key('ndcg', extra_topk, 'interval'): [v['ndcg:worst'], v['ndcg:best']],
                key('ndcg', extra_topk, 'expected'): v['ndcg:expected'],
                key('acg', extra_topk): v['acg:index'], key('wap', extra_topk): v['wap:index'],
                key('wap', extra_topk, 'expected'): v['wap:expected']})
  if 'neighbours' in extra:
    name = 'all' if extra_topk is None else extra_topk
    out.update({key('neighbour_map', extra_topk): _mean(values['neighbours'][f'ap@{name}:index']),
                key('neighbour_map', extra_topk, 'expected'): _mean(
                    values['neighbours'][f'ap@{name}:expected']),
                'neighbour_topk': neighbour_count(split)})
  if 'copies' in extra:
    out.update(evaluate_copies(encode, source, split, query_codes, db_codes, seed=seed,
                               cache=cache))
  return out


def neighbour_count(split: Split) -> int:
  """k of the neighbour protocol: NEIGHBOUR_FRACTION of the database, at least 1."""
  return max(1, round(NEIGHBOUR_FRACTION * len(split.database)))


def _neighbour_sets(source: Source, split: Split, cache: dict) -> np.ndarray:
  if 'neighbour_sets' not in cache:
    cache['neighbour_sets'] = neighbours.neighbour_sets(
        data_base.flat_pixels(source, split.query),
        data_base.flat_pixels(source, split.database), neighbour_count(split))
  return cache['neighbour_sets']


def evaluate_copies(encode: Callable, source: Source, split: Split, query_codes, db_codes, *,
                    seed: int, cache: dict | None = None) -> dict[str, float]:
  """Copy detection (module docstring): copy_map@all, copy_recall@1 and @10, and their
  `_expected` versions, in one pass. encode(source, indices) → hash-layer outputs z
  [len(indices), K]; query_codes and db_codes: the evaluation's ±1 codes [Q, K], [N, K]."""
  cache = {} if cache is None else cache
  if 'copies' not in cache:
    copies = augment.copies(jax.random.PRNGKey(seed),
                            data_base.to_float(source.images(split.query)))
    pixels = np.clip(np.round((np.asarray(copies) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    cache['copies'] = ArraySource(pixels, source.labels[split.query])
  copy_codes = np.asarray(codes_lib.sign_codes(encode(cache['copies'],
                                                      np.arange(len(split.query)))))
  database = np.concatenate([db_codes, query_codes])  # the originals follow the database
  targets = IndexSets((len(db_codes) + np.arange(len(query_codes)))[:, None])
  measures = {ties: copy_detection.FirstHit(targets, ties, (1, 10))
              for ties in ('index', 'expected')}
  values = engine.measure(copy_codes, engine.Database.of(database), measures)
  out = {}
  for ties in ('index', 'expected'):
    out.update({key('copy_map', None, ties): _mean(values[ties]['inverse_rank']),
                key('copy_recall', 1, ties): _mean(values[ties]['hit@1']),
                key('copy_recall', 10, ties): _mean(values[ties]['hit@10'])})
  return out


def query_groups(labels_Q: np.ndarray, new_classes: np.ndarray) -> dict[str, np.ndarray]:
  """bool masks over the queries: 'all', 'old' (classes not in new_classes), 'new'."""
  new = np.isin(labels_Q, new_classes) if np.asarray(labels_Q).ndim == 1 else np.zeros(
      len(labels_Q), bool)
  return {'all': np.ones(len(labels_Q), bool), 'old': ~new, 'new': new}


def evaluate_update(state, cfg: HashConfig, source: Source, split: Split,
                    indexed: dict[str, np.ndarray], new_classes: np.ndarray,
                    mesh=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Scores `state` as an update of the run whose codes are `indexed` (db_indices int [M],
  db_codes ±1 [M, K]): one pass per database version, the query groups read from it.

  Returns:
    (results, codes). results: map@T_<reencoded|kept>_<all|old|new> (T = map_topk, or 'all')
    with map@T_..._interval ([worst, best] over tied orders; a group without queries is
    absent); map@T and map@T_interval of the configured `updating.database_codes` on all
    queries; flip_rate and items_flipped of the indexed items (`priors.code_flip_rate`);
    database_bits_recomputed.
    codes: ±1 'query' [Q, K] and 'database' [N, K] as configured.
  """
  query = sign_encode(state, source, split.query, cfg, mesh)
  reencoded = sign_encode(state, source, split.database, cfg, mesh)
  where = np.searchsorted(split.database, indexed['db_indices'])
  kept = reencoded.copy()
  kept[where] = indexed['db_codes']
  results: dict[str, Any] = {'step': int(state.step)}
  ql, dl = source.labels[split.query], source.labels[split.database]
  groups = query_groups(ql, new_classes)
  name = f'ap@{"all" if cfg.map_topk is None else cfg.map_topk}'
  for version, db in (('reencoded', reencoded), ('kept', kept)):
    measure = metrics.Ranked(Labels(ql, dl), (cfg.map_topk,), (), ('index', 'worst', 'best'))
    ap = engine.measure(query, engine.Database.of(db), {'map': measure})['map']
    for group, mask in groups.items():
      if mask.any():
        at = key('map', cfg.map_topk, f'{version}_{group}')
        results[at] = _mean(ap[f'{name}:index'], mask)
        results[f'{at}_interval'] = [_mean(ap[f'{name}:worst'], mask),
                                     _mean(ap[f'{name}:best'], mask)]
  mode = 'kept' if cfg.updating.database_codes == 'keep' else 'reencoded'
  results[key('map', cfg.map_topk)] = results[key('map', cfg.map_topk, f'{mode}_all')]
  results[key('map', cfg.map_topk, 'interval')] = results[
      key('map', cfg.map_topk, f'{mode}_all_interval')]
  results.update(priors.code_flip_rate(indexed['db_codes'], reencoded[where]))
  recomputed = len(split.database) - (len(where) if mode == 'kept' else 0)
  results.update({'database_bits_recomputed': int(recomputed * cfg.bits), 'bits': cfg.bits,
                  'map_topk': cfg.map_topk, 'num_query': len(split.query),
                  'num_database': len(split.database), 'num_indexed': len(where)})
  return results, {'query': query, 'database': kept if mode == 'kept' else reencoded}


# Keys of eval rows written before the metric keys took the `map@100` form.
_RENAMED = {'precision_at_radius_2': f'precision@radius{RADIUS}',
            'recall_at_radius_2': f'recall@radius{RADIUS}', 'neighbour_k': 'neighbour_topk',
            **{f'copy_{old}{mode}': key(name, topk, mode[1:] or None)
               for old, name, topk in (('map', 'copy_map', None), ('recall_at_1', 'copy_recall', 1),
                                       ('recall_at_10', 'copy_recall', 10))
               for mode in ('', '_expected')}}
_AT_TOPK = ('map', 'ndcg', 'acg', 'wap', 'neighbour_map')
_SUFFIXES = ('', '_interval', '_expected',
             *(f'_{v}_{g}{i}' for v in ('reencoded', 'kept') for g in ('all', 'old', 'new')
               for i in ('', '_interval')))


def upgrade_row(row: dict[str, Any], topk=...) -> dict[str, Any]:
  """An eval row in today's keys: a row written before the metric keys took the `map@100`
  form (map, map_interval, ndcg_expected, precision_at_radius_2, copy_recall_at_1, ...) has
  them renamed, with the cutoff `topk` (default: the row's own map_topk); a row already in
  today's keys is returned as it is."""
  if topk is ...:
    if 'map_topk' not in row:
      return row
    topk = row['map_topk']
  if any('@' in k for k in row):
    return row
  renamed = dict(_RENAMED)
  for name in _AT_TOPK:
    for suffix in _SUFFIXES:
      renamed[f'{name}{suffix}'] = key(name, topk) + suffix
  return {renamed.get(k, k): v for k, v in row.items()}
