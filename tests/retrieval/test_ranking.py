"""Host-side statistics (hashjax/retrieval/ranking.py) against direct numpy computations."""

import numpy as np

from hashjax.retrieval import ranking


def test_full_index_ap_ranks_ties_by_index():
  rng = np.random.default_rng(0)
  dist = rng.integers(0, 5, (9, 300)).astype(np.uint8)  # every distance shared by ~60 items
  rel = (rng.random((9, 300)) < 0.3).astype(np.uint8)
  rel[0] = 0  # no relevant item: AP 0
  expected = []
  for q in range(9):
    ranked = rel[q, np.argsort(dist[q].astype(np.int64), kind='stable')].astype(float)
    hits = np.cumsum(ranked)
    expected.append(0.0 if hits[-1] == 0 else
                    np.sum(ranked * hits / np.arange(1, 301)) / hits[-1])
  np.testing.assert_allclose(ranking.full_index_ap(dist, rel), expected, rtol=0, atol=1e-12)


def test_histograms_count_every_distance_and_drop_the_padding_bin():
  rng = np.random.default_rng(1)
  bits = 6
  dist = rng.integers(0, bits + 1, (4, 256))
  dist[:, 250:] = bits + 1  # padding rows
  rel = rng.random((4, 256)) < 0.4
  key = (dist + (bits + 2) * rel).astype(np.uint16)
  count, relcount = ranking.histograms(key, bits)
  for v in range(bits + 1):
    np.testing.assert_array_equal(count[:, v], (dist == v).sum(1))
    np.testing.assert_array_equal(relcount[:, v], ((dist == v) & rel).sum(1))
