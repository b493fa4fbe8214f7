import numpy as np
import pytest

from hashjax import (average_precision, mean_average_precision, precision_at_radius,
                     recall_at_radius)


def _brute_ap(q_codes, db_codes, q_labels, db_labels, topk):
  """Reference: stable argsort per query (ties by index), AP@K over the top K."""
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


@pytest.mark.parametrize('radius', [0, 1, 2, 4])
def test_radius_precision_and_recall_match_bruteforce(radius):
  qc, dc, ql, dl = _random_problem(3, bits=8)
  precisions, recalls = [], []
  for c, l in zip(qc, ql):
    ball = (c[None, :] != dc).sum(1) <= radius
    rel = dl == l
    precisions.append((ball & rel).sum() / ball.sum() if ball.sum() else 0.0)
    recalls.append((ball & rel).sum() / rel.sum() if rel.sum() else 0.0)
  assert precision_at_radius(qc, dc, ql, dl, radius=radius) == pytest.approx(np.mean(precisions))
  assert recall_at_radius(qc, dc, ql, dl, radius=radius) == pytest.approx(np.mean(recalls))


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
