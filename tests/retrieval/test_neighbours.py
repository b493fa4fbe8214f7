"""Nearest-neighbour ground truth (hashjax/retrieval/neighbours.py) and AP against it
(metrics.average_precision_of_sets)."""

import numpy as np
import pytest

from hashjax.retrieval import metrics
from hashjax.retrieval.neighbours import neighbour_sets


def test_neighbour_sets_match_a_stable_sort_of_exact_distances():
  rng = np.random.default_rng(0)
  db = rng.integers(0, 4, (300, 5))
  db[150:160] = db[10]  # duplicates: equal distances, the lower index first
  queries = np.concatenate([db[:3], rng.integers(0, 4, (6, 5))])
  got = neighbour_sets(queries, db, 20)
  dist = ((queries[:, None, :] - db[None, :, :]) ** 2).sum(-1)
  np.testing.assert_array_equal(got, np.argsort(dist, axis=1, kind='stable')[:, :20])


def test_neighbour_set_errors_are_one_line():
  with pytest.raises(ValueError, match='topk=0 must be an integer in 1..5'):
    neighbour_sets(np.zeros((2, 3)), np.zeros((5, 3)), 0)
  with pytest.raises(ValueError, match='features differ in size'):
    neighbour_sets(np.zeros((2, 3)), np.zeros((5, 4)), 1)


@pytest.mark.parametrize('ties', ['index', 'best', 'worst', 'expected'])
@pytest.mark.parametrize('topk', [None, 7, 40])
def test_sets_of_same_class_items_give_the_class_label_ap(ties, topk):
  # The relevant set of a query = the database items of its class: AP must equal the AP from
  # the labels themselves, under every tie order.
  rng = np.random.default_rng(1)
  db = np.where(rng.random((120, 6)) > 0.5, 1, -1)
  queries = np.where(rng.random((9, 6)) > 0.5, 1, -1)
  db_labels, query_labels = rng.integers(0, 4, 120), rng.integers(0, 4, 9)
  width = max(int(np.sum(db_labels == c)) for c in range(4))
  sets = np.full((9, width), -1)
  for q, c in enumerate(query_labels):
    members = np.flatnonzero(db_labels == c)
    sets[q, :len(members)] = rng.permutation(members)  # any order, padded with -1
  got = metrics.average_precision_of_sets(queries, db, sets, topk=topk, ties=ties)
  want = metrics.average_precision(queries, db, query_labels, db_labels, topk=topk, ties=ties)
  np.testing.assert_allclose(got, want, atol=1e-12)


def test_bad_relevant_sets_are_one_line_errors():
  codes = np.ones((3, 4))
  with pytest.raises(ValueError, match='relevant index 9 is outside the database'):
    metrics.average_precision_of_sets(codes, codes, np.array([[0], [1], [9]]))
  with pytest.raises(ValueError, match=r'relevant_sets must be int \[Q, R\]'):
    metrics.average_precision_of_sets(codes, codes, np.array([0, 1, 2]))
