"""Evaluations beyond class labels, for eval.json (`eval_extra`, comma-separated):

* `ndcg`: graded relevance (`hashjax.graded`; multi-hot labels): NDCG, ACG and weighted mAP at
  `map_topk` (None: the whole database), with index ties, NDCG's [worst, best] interval and
  the expected values over random tie orders;
* `neighbours`: the unsupervised protocol: each query's relevant items are its 1 % nearest
  database items in pixel space (`hashjax.neighbours`); mAP at `map_topk` by index and
  expected ties;
* `copies`: copy detection without labels (`hashjax.copy_detection`): every query image is
  transformed (`augment.copies`: a stronger crop than training's, rotation, quantisation,
  occlusion; the same copies at every evaluation) and searched for among the database plus
  the query originals; mAP, recall@1 and recall@10 by index and expected ties.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from hashjax import augment
from hashjax import codes as codes_lib
from hashjax import graded, metrics, neighbours
from hashjax import data as data_lib
# The package exports the function under the module's name: import it from the module.
from hashjax.copy_detection import copy_detection

EXTRA_METRICS = ('ndcg', 'neighbours', 'copies')
NEIGHBOUR_FRACTION = 0.01  # relevant: the 1 % nearest database items in pixel space


def parse(names: str) -> tuple[str, ...]:
  """'ndcg,copies' → ('ndcg', 'copies'); '' → (). Unknown names raise ValueError."""
  chosen = tuple(n.strip() for n in names.split(',') if n.strip())
  for name in chosen:
    if name not in EXTRA_METRICS:
      raise ValueError(f'unknown eval_extra metric {name!r}; accepted: '
                       f'{", ".join(EXTRA_METRICS)}')
  return chosen


def evaluate_extra(names: tuple[str, ...], encode: Callable, source: data_lib.Source,
                   split: data_lib.Split, query_codes, db_codes, *, topk, seed: int,
                   cache: dict | None = None) -> dict[str, Any]:
  """The eval.json entries of each metric in `names` (see the module docstring).

  encode(source, indices) → hash-layer outputs z [len(indices), K]; query_codes and db_codes
  are the evaluation's ±1 codes [Q, K] and [N, K]. `cache`: a dict kept across the
  evaluations of one run, which then compute the neighbour sets and the copies once.
  """
  cache = {} if cache is None else cache
  out: dict[str, Any] = {}
  if 'ndcg' in names:
    both = graded.graded_metrics(query_codes, db_codes, source.labels[split.query],
                                 source.labels[split.database], topk=topk, ties=metrics.TIES)
    mean = lambda key: float(both[key].mean())
    out.update(ndcg=mean('ndcg:index'), ndcg_interval=[mean('ndcg:worst'), mean('ndcg:best')],
               ndcg_expected=mean('ndcg:expected'), acg=mean('acg:index'),
               wap=mean('wap:index'), wap_expected=mean('wap:expected'))
  if 'neighbours' in names:
    k = max(1, round(NEIGHBOUR_FRACTION * len(split.database)))
    if 'neighbour_sets' not in cache:
      cache['neighbour_sets'] = neighbours.neighbour_sets(
          data_lib.flat_pixels(source, split.query),
          data_lib.flat_pixels(source, split.database), k)
    sets = cache['neighbour_sets']
    ap = lambda ties: float(metrics.average_precision_of_sets(
        query_codes, db_codes, sets, topk=topk, ties=ties).mean())
    out.update(neighbour_map=ap('index'), neighbour_map_expected=ap('expected'),
               neighbour_k=k)
  if 'copies' in names:
    if 'copies' not in cache:
      copies = augment.copies(jax.random.PRNGKey(seed),
                              data_lib.to_float(source.images(split.query)))
      pixels = np.clip(np.round((np.asarray(copies) + 1.0) * 127.5), 0, 255).astype(np.uint8)
      cache['copies'] = data_lib.ArraySource(pixels, source.labels[split.query])
    copy_source = cache['copies']
    copy_codes = np.asarray(codes_lib.sign_codes(encode(copy_source,
                                                        np.arange(len(split.query)))))
    database = np.concatenate([db_codes, query_codes])  # the originals follow the database
    targets = len(db_codes) + np.arange(len(query_codes))
    for ties, suffix in (('index', ''), ('expected', '_expected')):
      scores = copy_detection(copy_codes, database, targets, ties=ties)
      out.update({f'copy_map{suffix}': scores['map'],
                  f'copy_recall_at_1{suffix}': scores['recall@1'],
                  f'copy_recall_at_10{suffix}': scores['recall@10']})
  return out
