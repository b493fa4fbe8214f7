import builtins

import numpy as np
import pytest

from hashjax.retrieval import backends as search_backends
from hashjax.retrieval.search import HammingIndex, hamming_topk
from hashjax.runtime.errors import SearchError
from tests.retrieval.test_mih import _learned_like

CASES = {
    'learned-like': lambda: _learned_like(400, 25, 64, 0.03, 0),
    'heavy ties (16 bits)': lambda: _learned_like(30, 100, 16, 0.05, 1),
    'uniform': lambda: (np.packbits(np.random.default_rng(2).random((3000, 32)) > 0.5, 1),
                        np.packbits(np.random.default_rng(3).random((20, 32)) > 0.5, 1)),
    'odd bits (20)': lambda: _learned_like(100, 20, 20, 0.05, 4),
}


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('topk', [1, 25, 100])
def test_every_backend_returns_the_linear_scans_neighbours_in_its_tie_order(case, topk):
  db, queries = CASES[case]()
  bits = {'heavy ties (16 bits)': 16, 'uniform': 32, 'odd bits (20)': 20}.get(case, 64)
  want = hamming_topk(queries, db, topk)
  for backend in search_backends.BACKENDS:
    got = HammingIndex(db, bits, backend=backend).search(queries, topk)
    np.testing.assert_array_equal(got[0], want[0], err_msg=backend)
    np.testing.assert_array_equal(got[1], want[1], err_msg=backend)


def test_faiss_ties_at_the_kth_distance_are_completed_by_index():
  # 200 copies of one code: faiss returns an arbitrary 10 of them; the scan the first 10.
  db = np.repeat(np.packbits(np.random.default_rng(5).random((3, 64)) > 0.5, 1), 200, axis=0)
  index = search_backends.faiss_index(db)
  dist, ids = search_backends.faiss_topk(index, db[[0, 450]], 10)
  assert ids.tolist() == [list(range(10)), list(range(400, 410))]
  assert not dist.any()


def test_the_whole_database_and_plus_minus_one_queries():
  db, queries = _learned_like(10, 5, 32, 0.1, 6)
  signs = np.where(np.unpackbits(queries, axis=1) > 0, 1, -1).astype(np.int8)
  want = hamming_topk(queries, db, len(db))
  for backend in search_backends.BACKENDS:
    got = HammingIndex(db, 32, backend=backend).search(signs, len(db))
    np.testing.assert_array_equal(got[1], want[1], err_msg=backend)


@pytest.mark.parametrize('backend', search_backends.BACKENDS)
def test_added_codes_are_found_and_the_backend_survives_save_and_load(backend, tmp_path):
  db, queries = _learned_like(200, 10, 64, 0.03, 7)
  index = HammingIndex(db[:1500], 64, backend=backend)
  index.search(queries, 5)  # builds what the backend needs for 1,500 items
  index.add(db[1500:])
  want = hamming_topk(queries, db, 5)
  np.testing.assert_array_equal(index.search(queries, 5)[1], want[1])
  index.save(str(tmp_path / 'codes.npz'))
  loaded = HammingIndex.load(str(tmp_path / 'codes.npz'))
  assert loaded.backend == backend and not any(k.startswith('mih_') for k in loaded.extras)
  if backend == 'mih':
    assert 'mih' in loaded._cache  # pylint: disable=protected-access  # tables read, not built
  np.testing.assert_array_equal(loaded.search(queries, 5)[1], want[1])


def test_bad_backend_and_missing_faiss_are_one_line(monkeypatch):
  db = np.zeros((4, 2), np.uint8)
  with pytest.raises(SearchError, match="backend='annoy'; accepted: jax, faiss, mih"):
    HammingIndex(db, 16, backend='annoy')
  real_import = builtins.__import__

  def no_faiss(name, *args, **kwargs):
    if name == 'faiss':
      raise ImportError(name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_faiss)
  with pytest.raises(SearchError, match=r"backend='faiss' needs faiss: pip install"):
    HammingIndex(db, 16, backend='faiss').search(db, 2)
  with pytest.raises(SearchError, match=r'query codes must be packed uint8 \[Q, 2\]'):
    HammingIndex(db, 16, backend='mih').search(np.zeros((1, 3), np.uint8), 2)
