"""NDCG@k and ACG@k (hashjax/retrieval/graded.py) against brute force over every order of tied items."""

import itertools

import numpy as np
import pytest

from hashjax.retrieval import graded


def _problem(seed, q=6, n=9, bits=3, labels=3):
  rng = np.random.default_rng(seed)
  pm1 = lambda m: np.where(rng.random((m, bits)) > 0.5, 1, -1)
  multi_hot = lambda m: (rng.random((m, labels)) > 0.5).astype(np.int64)
  return pm1(q), pm1(n), multi_hot(q), multi_hot(n)


def _orders(dist):
  """Every ranking of the items that sorts them by distance (all orders of tied items)."""
  groups = [list(np.flatnonzero(dist == d)) for d in np.unique(dist)]
  for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
    yield [i for perm in perms for i in perm]


def _dcg(gains, k):
  gains = np.asarray(gains[:k], float)
  return float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))


def _wap(rel, k):
  rel = np.asarray(rel[:k], float)
  positive = rel > 0
  terms = positive * np.cumsum(rel) / np.arange(1, len(rel) + 1)
  return float(terms.sum() / positive.sum()) if positive.any() else 0.0


def _brute(qc, dc, ql, dl, k):
  """{mode: (ndcg [Q], acg [Q], wap [Q])} over every tie order: index, best, worst, expected
  (the mean)."""
  out = {mode: ([], [], []) for mode in ('index', 'best', 'worst', 'expected')}
  for code, label in zip(qc, ql):
    dist = (code[None, :] != dc).sum(1)
    rel = (dl @ label) if dl.ndim == 2 else (dl == label).astype(int)
    ideal = _dcg(2.0 ** np.sort(rel)[::-1] - 1, k)
    norm = lambda dcg: dcg / ideal if ideal > 0 else 0.0
    ndcgs, acgs, waps = [], [], []
    for order in _orders(dist):
      ndcgs.append(norm(_dcg(2.0 ** rel[order] - 1, k)))
      acgs.append(float(np.sum(rel[order][:k])) / k)
      waps.append(_wap(rel[order], k))
    index = np.argsort(dist, kind='stable')
    values = {'index': (norm(_dcg(2.0 ** rel[index] - 1, k)), float(np.sum(rel[index][:k])) / k,
                        _wap(rel[index], k)),
              'best': (max(ndcgs), max(acgs), max(waps)),
              'worst': (min(ndcgs), min(acgs), min(waps)),
              'expected': (np.mean(ndcgs), np.mean(acgs), np.mean(waps))}
    for mode, triple in values.items():
      for values_list, value in zip(out[mode], triple):
        values_list.append(value)
  return out


@pytest.mark.parametrize('seed,topk', [(0, 1), (1, 3), (2, 5), (3, None)])
def test_every_tie_order_matches_brute_force(seed, topk):
  # 3 bits over 9 items: groups of tied items that the cutoff cuts through.
  qc, dc, ql, dl = _problem(seed)
  got = graded.graded_metrics(qc, dc, ql, dl, topk=topk,
                              ties=('index', 'best', 'worst', 'expected'))
  want = _brute(qc, dc, ql, dl, topk or len(dc))
  for mode, (ndcg, acg, wap) in want.items():
    np.testing.assert_allclose(got[f'ndcg:{mode}'], ndcg, atol=1e-12, err_msg=mode)
    np.testing.assert_allclose(got[f'acg:{mode}'], acg, atol=1e-12, err_msg=mode)
    np.testing.assert_allclose(got[f'wap:{mode}'], wap, atol=1e-12, err_msg=mode)


def test_class_ids_give_binary_relevance():
  rng = np.random.default_rng(4)
  qc, dc = np.where(rng.random((5, 3)) > 0.5, 1, -1), np.where(rng.random((8, 3)) > 0.5, 1, -1)
  ql, dl = rng.integers(0, 3, 5), rng.integers(0, 3, 8)
  want = _brute(qc, dc, ql, dl, 4)
  got = graded.graded_metrics(qc, dc, ql, dl, topk=4, ties=('index', 'expected'))
  np.testing.assert_allclose(got['ndcg:index'], want['index'][0], atol=1e-12)
  np.testing.assert_allclose(got['ndcg:expected'], want['expected'][0], atol=1e-12)
  assert graded.mean_acg(qc, dc, ql, dl, topk=4) == pytest.approx(np.mean(want['index'][1]))


def test_a_large_database_takes_the_top_k_path():
  # 9,000 items: the index-order top k comes from hashjax.retrieval.selection (a sampled threshold).
  rng = np.random.default_rng(5)
  qc, dc = np.where(rng.random((4, 12)) > 0.5, 1, -1), np.where(rng.random((9000, 12)) > 0.5, 1, -1)
  ql, dl = (rng.random((4, 4)) > 0.5).astype(int), (rng.random((9000, 4)) > 0.5).astype(int)
  got = graded.graded_metrics(qc, dc, ql, dl, topk=100)
  for i in range(4):
    dist = (qc[i][None, :] != dc).sum(1)
    rel = dl @ ql[i]
    order = np.argsort(dist, kind='stable')
    ideal = _dcg(2.0 ** np.sort(rel)[::-1] - 1, 100)
    expected = _dcg(2.0 ** rel[order] - 1, 100) / ideal if ideal > 0 else 0.0
    assert got['ndcg:index'][i] == pytest.approx(expected, abs=1e-12)


def test_bad_arguments_are_one_line_errors():
  qc, dc, ql, dl = _problem(0)
  with pytest.raises(ValueError, match="unknown ties mode 'random'"):
    graded.graded_metrics(qc, dc, ql, dl, topk=3, ties='random')
  with pytest.raises(ValueError, match='topk=0 must be a positive integer'):
    graded.mean_ndcg(qc, dc, ql, dl, topk=0)
  with pytest.raises(ValueError, match='codes must be'):
    graded.mean_ndcg(qc[:, :2], dc, ql, dl, topk=3)


@pytest.mark.parametrize('topk', [10, 40])
def test_expected_matches_monte_carlo_over_random_tie_orders(topk):
  # 60 items on 4 bits: tie groups of ~4–15 items, too many orders to enumerate.
  qc, dc, ql, dl = _problem(11, q=8, n=60, bits=4, labels=4)
  got = graded.graded_metrics(qc, dc, ql, dl, topk=topk, ties=('expected',))
  rng = np.random.default_rng(0)
  samples, discount = 20_000, np.log2(np.arange(2, topk + 2))
  for i, (code, label) in enumerate(zip(qc, ql)):
    dist, rel = (code[None, :] != dc).sum(1), dl @ label
    ideal = np.sum((2.0 ** np.sort(rel)[::-1][:topk] - 1) / discount)
    order = np.argsort(dist[None, :] + rng.random((samples, len(dist))), axis=1)[:, :topk]
    ranked = rel[order].astype(float)  # [samples, topk]
    ndcg = np.sum((2.0 ** ranked - 1) / discount, axis=1) / ideal
    positive = ranked > 0
    wap = np.sum(positive * np.cumsum(ranked, axis=1) / np.arange(1, topk + 1), axis=1)
    wap = np.where(positive.any(1), wap / np.maximum(positive.sum(1), 1), 0.0)
    for name, values in (('ndcg', ndcg), ('acg', ranked.mean(1)), ('wap', wap)):
      error = 4 * values.std() / np.sqrt(samples) + 1e-12  # four standard errors
      assert abs(got[f'{name}:expected'][i] - values.mean()) <= error, (name, i)
