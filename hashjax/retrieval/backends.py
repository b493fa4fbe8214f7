"""The search backends of `HammingIndex`, all with one meaning: the exact topk nearest codes by
Hamming distance, ties by database index, so each returns the same neighbours in the same order.

* 'jax' (default): the linear scan of `hashjax.retrieval.search` on any device, queries sharded over
  the local devices.
* 'faiss' (CPU, the `faiss` extra): faiss `IndexBinaryFlat`, whose order among equal
  distances is arbitrary: each row is re-sorted by (distance, index), and where items tie at
  the k-th distance (some of them may have been left out) that query's set at that distance
  is completed by a range search, so the result is the linear scan's exactly.
* 'mih': multi-index hashing (`hashjax.retrieval.mih`), sub-linear on spread-out codes, with
  the 'jax' scan for the queries it would not serve well.
"""

from __future__ import annotations

import numpy as np

from hashjax.runtime.errors import BackendError

BACKENDS = ('jax', 'faiss', 'mih')


def check_backend(backend) -> str:
  if backend not in BACKENDS:
    raise BackendError(f'backend={backend!r}; accepted: {", ".join(BACKENDS)}')
  return backend


def import_faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise BackendError("backend='faiss' needs faiss: pip install -e \".[faiss]\" (faiss-cpu)"
                       ) from None
  return faiss


def faiss_index(db_NxP: np.ndarray):
  """A faiss `IndexBinaryFlat` over packed codes uint8 [N, P]."""
  faiss = import_faiss()
  index = faiss.IndexBinaryFlat(8 * db_NxP.shape[1])
  index.add(np.ascontiguousarray(db_NxP))
  return index


def _sorted_rows(dist_QxT: np.ndarray, ids_QxT: np.ndarray):
  order = np.lexsort((ids_QxT, dist_QxT), axis=-1)
  return (np.take_along_axis(dist_QxT, order, -1), np.take_along_axis(ids_QxT, order, -1))


def faiss_topk(index, query_QxP: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
  """(distances int32 [Q, T], ids int64 [Q, T]): faiss's neighbours in the linear scan's order.

  Searches topk + 1 neighbours: where the (topk+1)-th is farther than the topk-th, every item
  within the topk-th distance is among them; elsewhere a range search gets them all.
  """
  query_QxP = np.ascontiguousarray(query_QxP)
  extra = int(topk < index.ntotal)
  dist, ids = index.search(query_QxP, topk + extra)
  dist, ids = _sorted_rows(dist.astype(np.int32), ids.astype(np.int64))
  if extra:
    tied = np.flatnonzero(dist[:, topk] == dist[:, topk - 1])
    if len(tied):
      limits, range_dist, range_ids = index.range_search(query_QxP[tied],
                                                         int(dist[tied, topk - 1].max()) + 1)
      for row, q in enumerate(tied):
        lo, hi = limits[row], limits[row + 1]
        d, i = _sorted_rows(range_dist[lo:hi].astype(np.int32)[None],
                            range_ids[lo:hi].astype(np.int64)[None])
        dist[q, :topk], ids[q, :topk] = d[0, :topk], i[0, :topk]
  return dist[:, :topk], ids[:, :topk]
