import numpy as np
import pytest

from hashjax import (
  average_precision,
  mean_average_precision,
  precision_at_radius,
  recall_at_radius,
)
from tests import ROOT


def _brute_ap(q_codes, db_codes, q_labels, db_labels, topk):
  """Reference: stable argsort per query (ties by index), AP@topk over the first topk ranks."""
  aps = []
  for qc, ql in zip(q_codes, q_labels):
    dist = (qc[None, :] != db_codes).sum(1)
    order = np.argsort(dist, kind='stable')[:topk]
    if db_labels.ndim == 1:
      rel = (db_labels[order] == ql).astype(float)
    else:
      rel = ((db_labels[order] @ ql) > 0).astype(float)
    hits = np.cumsum(rel)
    r = rel.sum()
    aps.append(0.0 if r == 0 else float(np.sum(rel * hits / np.arange(1, len(rel) + 1)) / r))
  return np.array(aps)


def _random_problem(seed, bits=4, q=37, n=211, classes=5, multi=False):
  rng = np.random.default_rng(seed)
  pm1 = lambda m: np.where(rng.random((m, bits)) > 0.5, 1, -1)
  if multi:
    lab = lambda m: (rng.random((m, classes)) > 0.7).astype(np.int64)
  else:
    lab = lambda m: rng.integers(0, classes, m)
  return pm1(q), pm1(n), lab(q), lab(n)


@pytest.mark.parametrize('topk', [None, 1, 10, 100, 500])
@pytest.mark.parametrize('multi', [False, True])
def test_map_matches_bruteforce_with_many_ties(topk, multi):
  # 4 bits over 211 items: every distance is shared by dozens of items.
  qc, dc, ql, dl = _random_problem(topk or 0, multi=multi)
  expected = _brute_ap(qc, dc, ql, dl, topk)
  got = average_precision(qc, dc, ql, dl, topk=topk, chunk_size=16)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert mean_average_precision(qc, dc, ql, dl, topk=topk) == pytest.approx(expected.mean(), abs=1e-6)


@pytest.mark.parametrize('bits,n', [(16, 9000), (300, 700)])
def test_map_matches_bruteforce_on_a_sampled_database_and_long_codes(bits, n):
  # n = 9,000 rows: the top-k search guesses its threshold from a sample of the database;
  # 300 bits: distances in uint16. Both must change nothing.
  qc, dc, ql, dl = _random_problem(bits, bits=bits, q=20, n=n)
  for topk in (None, 1, 250):
    expected = _brute_ap(qc, dc, ql, dl, topk)
    np.testing.assert_allclose(average_precision(qc, dc, ql, dl, topk=topk), expected,
                               atol=1e-6)


def test_query_with_no_relevant_item_scores_zero_and_counts():
  q = np.array([[1, 1], [1, -1]])
  db = np.array([[1, 1], [-1, -1]])
  aps = average_precision(q, db, np.array([0, 7]), np.array([0, 1]))
  np.testing.assert_allclose(aps, [1.0, 0.0])
  assert mean_average_precision(q, db, np.array([0, 7]), np.array([0, 1])) == 0.5


def test_hand_computed_ap():
  # Distances from the query: items 0..3 at 0, 1, 1, 2; relevant: items 1 and 3.
  q = np.array([[1, 1]])
  db = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
  aps = average_precision(q, db, np.array([1]), np.array([0, 1, 0, 1]))
  # Ranking 0,1,2,3: relevant at ranks 2 and 4 → (1/2 + 2/4) / 2 = 0.5.
  assert aps[0] == pytest.approx(0.5)
  # Top 2: one relevant item at rank 2 → R_K = 1, AP = 1/2.
  assert average_precision(q, db, np.array([1]), np.array([0, 1, 0, 1]), topk=2)[0] == pytest.approx(0.5)


def _bruteforce_radius(qc, dc, ql, dl, radius):
  """Mean precision and recall within Hamming radius `radius`, one query at a time."""
  precisions, recalls = [], []
  for c, l in zip(qc, ql):
    ball = (c[None, :] != dc).sum(1) <= radius
    rel = dl == l
    precisions.append((ball & rel).sum() / ball.sum() if ball.sum() else 0.0)
    recalls.append((ball & rel).sum() / rel.sum() if rel.sum() else 0.0)
  return np.mean(precisions), np.mean(recalls)


@pytest.mark.parametrize('radius', [0, 1, 2, 4])
def test_radius_precision_and_recall_match_bruteforce(radius):
  qc, dc, ql, dl = _random_problem(3, bits=8)
  precision, recall = _bruteforce_radius(qc, dc, ql, dl, radius)
  assert precision_at_radius(qc, dc, ql, dl, radius=radius) == pytest.approx(precision)
  assert recall_at_radius(qc, dc, ql, dl, radius=radius) == pytest.approx(recall)


def test_empty_ball_counts_as_zero_precision():
  q = np.array([[1] * 8])
  db = np.array([[-1] * 8])
  assert precision_at_radius(q, db, np.array([0]), np.array([0]), radius=2) == 0.0


def test_packed_codes_give_the_same_map():
  from hashjax import pack_codes
  qc, dc, ql, dl = _random_problem(5, bits=12)
  assert mean_average_precision(pack_codes(qc), pack_codes(dc), ql, dl, topk=50) == pytest.approx(
      mean_average_precision(qc, dc, ql, dl, topk=50))


def test_metric_argument_errors():
  qc, dc, ql, dl = _random_problem(0)
  with pytest.raises(ValueError, match="unknown ties mode 'random'"):
    mean_average_precision(qc, dc, ql, dl, ties='random')
  with pytest.raises(ValueError, match='topk=0'):
    mean_average_precision(qc, dc, ql, dl, topk=0)
  with pytest.raises(ValueError, match='query labels'):
    mean_average_precision(qc, dc, ql[:3], dl)
  with pytest.raises(ValueError, match='radius=-1'):
    precision_at_radius(qc, dc, ql, dl, radius=-1)


# --- ties modes, one-pass report, PR curve, sharding -----------------------------------------

import itertools
import os
import subprocess
import sys

from hashjax.retrieval import metrics


def _ap_of_order(rel_sorted, topk):
  rel = np.asarray(rel_sorted, float)[:topk]
  hits = np.cumsum(rel)
  return 0.0 if hits[-1] == 0 else float(np.sum(rel * hits / np.arange(1, len(rel) + 1)) / hits[-1])


def _tie_orders(dist, rel):
  """Every ranking consistent with ascending distance: relevance per rank, one per tie order."""
  groups = [rel[dist == d] for d in np.unique(dist)]
  for perms in itertools.product(*[set(itertools.permutations(g)) for g in groups]):
    yield np.concatenate(perms)


def _rel_and_dist(qc, dc, ql, dl):
  return (qc[None, :] != dc).sum(1), (dl == ql).astype(int)


@pytest.mark.parametrize('topk', [None, 1, 2, 3, 5])
@pytest.mark.parametrize('seed', range(4))
def test_ties_modes_equal_exact_enumeration(seed, topk):
  # 7 items, 2 bits: tie groups of several items; enumerate every tie order exactly.
  qc, dc, ql, dl = _random_problem(seed, bits=2, q=3, n=7, classes=2)
  got = {mode: average_precision(qc, dc, ql, dl, topk=topk, ties=mode) for mode in metrics.TIES}
  for i in range(len(qc)):
    dist, rel = _rel_and_dist(qc[i], dc, ql[i], dl)
    aps = np.array([_ap_of_order(order, topk) for order in _tie_orders(dist, rel)])
    assert got['best'][i] == pytest.approx(aps.max(), abs=1e-9)
    assert got['worst'][i] == pytest.approx(aps.min(), abs=1e-9)
    assert got['expected'][i] == pytest.approx(aps.mean(), abs=1e-9)


def _reordered_ap(qc, dc, ql, dl, topk, relevant_first):
  """Brute force: stable sort by (distance, relevant first or last)."""
  aps = []
  for c, l in zip(qc, ql):
    dist, rel = _rel_and_dist(c, dc, l, dl)
    order = np.lexsort((-rel if relevant_first else rel, dist))
    aps.append(_ap_of_order(rel[order], topk))
  return np.array(aps)


def test_best_and_worst_full_ranking_reorder_tie_groups():
  qc, dc, ql, dl = _random_problem(11, bits=4)
  np.testing.assert_allclose(average_precision(qc, dc, ql, dl, ties='best'),
                             _reordered_ap(qc, dc, ql, dl, None, True), atol=1e-9)
  np.testing.assert_allclose(average_precision(qc, dc, ql, dl, ties='worst'),
                             _reordered_ap(qc, dc, ql, dl, None, False), atol=1e-9)


@pytest.mark.parametrize('topk', [None, 25])
def test_expected_matches_monte_carlo(topk):
  qc, dc, ql, dl = _random_problem(7, bits=4, q=20, n=40, classes=3)
  expected = mean_average_precision(qc, dc, ql, dl, topk=topk, ties='expected')
  rng = np.random.default_rng(0)
  samples = 50_000
  aps = []
  for c, l in zip(qc, ql):
    dist, rel = _rel_and_dist(c, dc, l, dl)
    keys = dist[None, :] + rng.random((samples, len(dist)))  # uniform order inside ties
    rel_sorted = rel[np.argsort(keys, axis=1)][:, :topk or len(dist)].astype(float)
    hits = np.cumsum(rel_sorted, axis=1)
    s = np.sum(rel_sorted * hits / np.arange(1, rel_sorted.shape[1] + 1), axis=1)
    aps.append(np.where(hits[:, -1] > 0, s / np.maximum(hits[:, -1], 1), 0.0).mean())
  assert expected == pytest.approx(np.mean(aps), abs=1e-3)


@pytest.mark.parametrize('topk', [None, 10, 100])
def test_best_ge_expected_ge_worst_and_index_inside(topk):
  qc, dc, ql, dl = _random_problem(2, bits=6, multi=True)
  ap = {mode: average_precision(qc, dc, ql, dl, topk=topk, ties=mode) for mode in metrics.TIES}
  assert np.all(ap['best'] >= ap['expected'] - 1e-12)
  assert np.all(ap['expected'] >= ap['worst'] - 1e-12)
  assert np.all((ap['index'] <= ap['best'] + 1e-12) & (ap['index'] >= ap['worst'] - 1e-12))
  summary = metrics.map_tie_summary(qc, dc, ql, dl, topk=topk)
  key = metrics.metric_key('map', topk)
  assert summary[key] == pytest.approx(ap['index'].mean())
  assert summary[f'{key}_interval'] == pytest.approx([ap['worst'].mean(), ap['best'].mean()])
  assert summary[f'{key}_expected'] == pytest.approx(ap['expected'].mean())


def test_pr_curve_matches_bruteforce_at_every_radius():
  qc, dc, ql, dl = _random_problem(3, bits=8)
  precision, recall = metrics.precision_recall_curve(qc, dc, ql, dl, chunk_size=8)
  assert precision.shape == recall.shape == (9,)
  for radius in range(9):
    expected_precision, expected_recall = _bruteforce_radius(qc, dc, ql, dl, radius)
    assert precision[radius] == pytest.approx(expected_precision)
    assert recall[radius] == pytest.approx(expected_recall)


@pytest.mark.parametrize('ties', ['index', 'best', 'worst', 'expected'])
def test_precision_at_topk_matches_bruteforce(ties):
  qc, dc, ql, dl = _random_problem(4, bits=5)
  topks = (1, 10, 50, 211, 500)
  got = metrics.precision_at_topk(qc, dc, ql, dl, topks=topks, ties=ties)
  for j, n in enumerate(topks):
    per_query = []
    for c, l in zip(qc, ql):
      dist, rel = _rel_and_dist(c, dc, l, dl)
      if ties == 'index':
        order = np.argsort(dist, kind='stable')
      else:  # relevant first / last bound the count; the expectation is linear
        order = np.lexsort((-rel if ties == 'best' else rel, dist))
      top = rel[order][:n]
      if ties == 'expected':
        t = np.sort(dist)[min(n, len(dist)) - 1]
        inside, at_t = (dist < t), (dist == t)
        m = min(n, len(dist)) - inside.sum()
        per_query.append((rel[inside].sum() + m * rel[at_t].mean()) / min(n, len(dist)))
      else:
        per_query.append(top.sum() / len(top))
    assert got[j] == pytest.approx(np.mean(per_query), abs=1e-9), n


def test_report_agrees_with_single_metrics():
  qc, dc, ql, dl = _random_problem(6, bits=6)
  report = metrics.retrieval_report(qc, dc, ql, dl, map_topks=(10, 100, None),
                                    precision_topks=(5,), ties=('index', 'expected'),
                                    pr_curve=True, chunk_size=8)
  for k, name in ((10, '10'), (100, '100'), (None, 'all')):
    assert report[f'map@{name}'] == pytest.approx(mean_average_precision(qc, dc, ql, dl, topk=k))
    assert report[f'map@{name}_expected'] == pytest.approx(
        mean_average_precision(qc, dc, ql, dl, topk=k, ties='expected'))
  assert report['precision@5'] == pytest.approx(
      metrics.precision_at_topk(qc, dc, ql, dl, topks=(5,))[0])
  assert len(report['pr_precision']) == 7


_SHARDED = r'''
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import numpy as np, jax
assert len(jax.devices()) == 8
from hashjax.retrieval import metrics
rng = np.random.default_rng(0)
qc = np.where(rng.random((37, 16)) > 0.5, 1, -1); dc = np.where(rng.random((1000, 16)) > 0.5, 1, -1)
ql, dl = rng.integers(0, 5, 37), rng.integers(0, 5, 1000)
r = metrics.retrieval_report(qc, dc, ql, dl, map_topks=(50, None), precision_topks=(10,),
                             ties=metrics.TIES, pr_curve=True, chunk_size=12)
print(json.dumps(r))
'''


def test_sharded_over_8_cpu_devices_equals_unsharded():
  import json
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  root = ROOT
  out = subprocess.run([sys.executable, '-c', _SHARDED], capture_output=True, text=True,
                       env=env, cwd=root, check=True)
  sharded = json.loads(out.stdout.strip().splitlines()[-1])
  rng = np.random.default_rng(0)
  qc = np.where(rng.random((37, 16)) > 0.5, 1, -1)
  dc = np.where(rng.random((1000, 16)) > 0.5, 1, -1)
  ql, dl = rng.integers(0, 5, 37), rng.integers(0, 5, 1000)
  report = metrics.retrieval_report(qc, dc, ql, dl, map_topks=(50, None),
                                    precision_topks=(10,), ties=metrics.TIES, pr_curve=True,
                                    chunk_size=12)
  for key, value in report.items():
    np.testing.assert_allclose(sharded[key], value, atol=1e-6, err_msg=key)


# --- inner_product_map: ranking real-valued codes ---------------------------------------------


def test_inner_product_map_equals_hamming_map_on_binary_codes():
  rng = np.random.default_rng(0)
  db = np.where(rng.random((300, 16)) > 0.5, 1, -1)
  q = np.where(rng.random((40, 16)) > 0.5, 1, -1)
  q_labels, db_labels = rng.integers(0, 5, 40), rng.integers(0, 5, 300)
  # ±1 codes: −⟨b_q, b_i⟩ = 2·Hamming − K, so both rankings (ties by index) coincide.
  for topk in (50, None):
    assert metrics.inner_product_map(q, db, q_labels, db_labels, topk=topk, chunk_size=16) == (
        pytest.approx(metrics.mean_average_precision(q, db, q_labels, db_labels, topk=topk),
                      abs=1e-7))
  multi_q, multi_db = rng.integers(0, 2, (40, 4)), rng.integers(0, 2, (300, 4))
  assert metrics.inner_product_map(q, db, multi_q, multi_db, topk=50) == pytest.approx(
      metrics.mean_average_precision(q, db, multi_q, multi_db, topk=50), abs=1e-7)
  with pytest.raises(ValueError, match='topk=0 must be a positive integer'):
    metrics.inner_product_map(q, db, q_labels, db_labels, topk=0)


def test_inner_product_map_ranks_by_the_real_values():
  db = np.array([[0.9, 0.1], [0.5, 0.5], [-1.0, 0.0]])
  q = np.array([[1.0, 0.0]])
  # Ranked 0, 1, 2; relevant: 1 and 2 → AP = (1/2 + 2/3) / 2.
  assert metrics.inner_product_map(q, db, np.array([1]), np.array([0, 1, 1])) == (
      pytest.approx((1 / 2 + 2 / 3) / 2))
