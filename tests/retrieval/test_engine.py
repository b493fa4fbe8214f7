"""The retrieval engine: one compiled pass per database bucket, one pass per evaluation, and
its tallies against brute force."""

import numpy as np
import pytest

from hashjax.data.base import ArraySource
from hashjax.data.split import Split
from hashjax.hashing import evaluation
from hashjax.retrieval import engine
from hashjax.retrieval.relevance import IndexSets, Labels


def _codes(rng, n, bits=16):
  return np.where(rng.random((n, bits)) > 0.5, 1, -1).astype(np.int8)


@pytest.mark.parametrize('rows', [1, 255, 256, 257, 5000, 50_000, 1_000_001])
def test_row_bucket_pads_by_at_most_a_32nd_beyond_the_alignment(rows):
  padded = engine.row_bucket(rows)
  assert padded >= rows and padded % engine.ALIGN == 0
  assert padded - rows < max(engine.ALIGN, rows / 32)


def test_a_new_database_size_within_its_bucket_compiles_nothing_new():
  rng = np.random.default_rng(0)
  queries = _codes(rng, 20)
  tallies = engine.Tallies(nearest=5, histogram=True)
  seen = []
  for n in (300, 333, 400):  # one bucket: 512 rows
    labels = Labels(rng.integers(0, 3, 20), rng.integers(0, 3, n))
    database = engine.Database.of(_codes(rng, n))
    chunks = list(engine.scan(queries, database, [(labels, tallies)]))
    assert chunks[0].nearest()[1].max() < n  # padding rows are never neighbours
    run = engine.program(database.bits, 5, ((labels.key, tallies),))
    seen.append((database.rows, run.distances._cache_size(), run.stats._cache_size()))
  assert seen[0][0] == 512 and seen == [seen[0]] * 3  # the first size compiled; then nothing


def test_first_relevant_counts_match_a_sort():
  rng = np.random.default_rng(1)
  queries, db = _codes(rng, 30, 8), _codes(rng, 200, 8)
  sets = rng.integers(-1, 200, (30, 3))
  sets[:, 0] = rng.integers(0, 200, 30)  # every query has a relevant item
  (chunk,) = engine.scan(queries, engine.Database.of(db),
                         [(IndexSets(sets), engine.Tallies(first_relevant=True))])
  closer, tied, before = chunk.first_relevant(0)
  dist = (8 - queries.astype(int) @ db.T.astype(int)) // 2
  for q in range(30):
    relevant = [i for i in set(sets[q]) if i >= 0]
    first = min(relevant, key=lambda i: (dist[q, i], i))  # the rank order: distance, index
    at = dist[q, first]
    assert closer[q] == np.sum(dist[q] < at) and tied[q] == np.sum(dist[q] == at)
    assert before[q] == np.sum(dist[q, :first] == at)


def test_one_evaluation_reads_each_query_chunk_once(monkeypatch):
  rng = np.random.default_rng(2)
  n = 120
  source = ArraySource(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
                       (rng.random((n, 4)) > 0.5).astype(np.int64))
  split = Split(query=np.arange(20), database=np.arange(20, n), train=np.arange(20, n))
  passes = []
  real_scan = engine.scan
  monkeypatch.setattr(engine, 'scan', lambda *a, **k: passes.append(len(a[0])) or real_scan(
      *a, **k))
  scores = evaluation.score(_codes(rng, 20), _codes(rng, 100), source, split, topk=10,
                            bits=16, extra=('ndcg', 'neighbours'))
  assert passes == [20]  # class mAP, the PR curve, NDCG/ACG/WAP and neighbour mAP: one pass
  assert {'map@10', 'ndcg@10', 'wap@10', 'neighbour_map@10', 'recall@radius2'} <= set(scores)
