"""Copy detection (hashjax/retrieval/copy_detection.py) against brute force over every tie order."""

import itertools

import numpy as np
import pytest

from hashjax.retrieval.copy_detection import copy_detection


def _problem(seed, q=7, n=8, bits=3):
  rng = np.random.default_rng(seed)
  db = np.where(rng.random((n, bits)) > 0.5, 1, -1)
  targets = rng.integers(0, n, q)
  queries = db[targets].copy()
  flips = rng.random(queries.shape) < 0.3  # transformed copies: a few bits flipped
  queries[flips] *= -1
  return queries, db, targets


def _brute(queries, db, targets, topks):
  """{mode: {'map@all', 'recall@k'}}: index order, and best / worst / mean over every order of
  the items tied with each query's original."""
  per_mode = {mode: [] for mode in ('index', 'best', 'worst', 'expected')}
  for code, target in zip(queries, targets):
    dist = (code[None, :] != db).sum(1)
    ranks = []
    for perm in itertools.permutations(np.flatnonzero(dist == dist[target])):
      order = [*np.flatnonzero(dist < dist[target]), *perm]
      ranks.append(order.index(target) + 1)
    index_rank = list(np.argsort(dist, kind='stable')).index(target) + 1
    scores = lambda rs: [np.mean([1 / r for r in rs])] + [np.mean([r <= k for r in rs])
                                                           for k in topks]
    per_mode['index'].append(scores([index_rank]))
    per_mode['best'].append(scores([min(ranks)]))
    per_mode['worst'].append(scores([max(ranks)]))
    per_mode['expected'].append(scores(ranks))
  names = ['map@all'] + [f'recall@{k}' for k in topks]
  return {mode: dict(zip(names, np.mean(rows, axis=0))) for mode, rows in per_mode.items()}


@pytest.mark.parametrize('seed', range(4))
def test_every_tie_order_matches_brute_force(seed):
  queries, db, targets = _problem(seed)
  want = _brute(queries, db, targets, (1, 3))
  for mode, scores in want.items():
    got = copy_detection(queries, db, targets, ties=mode, topks=(1, 3))
    assert got == pytest.approx(scores, abs=1e-12), mode


def test_exact_copies_rank_first_unless_tied():
  rng = np.random.default_rng(7)
  db = np.where(rng.random((500, 32)) > 0.5, 1, -1)
  targets = rng.integers(0, 500, 40)
  scores = copy_detection(db[targets], db, targets, ties='worst')
  # 32-bit random codes of 500 items: duplicates are very unlikely, so every copy is first.
  assert scores == {'map@all': 1.0, 'recall@1': 1.0, 'recall@10': 1.0}


def test_bad_targets_and_arguments_are_one_line_errors():
  queries, db, targets = _problem(0)
  with pytest.raises(ValueError, match='target 8 is outside the database'):
    copy_detection(queries, db, np.full(len(queries), 8))
  with pytest.raises(ValueError, match='one database index per query'):
    copy_detection(queries, db, targets[:3])
  with pytest.raises(ValueError, match='topks=0 must be a positive integer'):
    copy_detection(queries, db, targets, topks=(0,))
  with pytest.raises(ValueError, match="unknown ties mode 'random'"):
    copy_detection(queries, db, targets, ties='random')
  with pytest.raises(ValueError, match='codes must be'):
    copy_detection(queries[:, :2], db, targets)


def test_expected_matches_monte_carlo_over_random_tie_orders():
  # 200 items on 5 bits: each original is tied with ~6 others on average, often many more.
  queries, db, targets = _problem(5, q=30, n=200, bits=5)
  got = copy_detection(queries, db, targets, ties='expected', topks=(1, 10))
  rng = np.random.default_rng(0)
  samples, rr, hit1, hit10 = 20_000, [], [], []
  for code, target in zip(queries, targets):
    dist = (code[None, :] != db).sum(1)
    keys = dist[None, :] + rng.random((samples, len(dist)))  # uniform order inside ties
    rank = 1 + (keys < keys[:, [target]]).sum(1)
    rr.append(1 / rank)
    hit1.append(rank <= 1)
    hit10.append(rank <= 10)
  for name, values in (('map@all', rr), ('recall@1', hit1), ('recall@10', hit10)):
    values = np.mean(np.asarray(values, float), axis=0)  # the mean over queries, per sample
    assert abs(got[name] - values.mean()) <= 4 * values.std() / np.sqrt(samples) + 1e-12, name
