"""Exact Hamming nearest-neighbour search over packed codes: `hamming_topk` and the growing,
saveable `HammingIndex` with its backends.

`hamming_topk` ranks by Hamming distance with ties broken by database index (the same order as
`metrics` with `ties='index'`), without sorting whole rows (see `retrieval.selection`). Queries
run in chunks of about 2**24 query·item pairs per device, split over all devices on the
'data' axis; memory is O(chunk · N) bytes.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from hashjax.retrieval import backends, engine, mih
from hashjax.retrieval import codes as codes_lib
from hashjax.runtime.errors import UNREADABLE_NPZ_ERRORS, BackendError, SearchError

CODES_FILE = 'codes.npz'


def _check_topk(topk, num_database: int) -> None:
  if not isinstance(topk, (int, np.integer)) or not 1 <= topk <= num_database:
    raise SearchError(f'topk={topk!r} must be an integer in 1..{num_database} (the database size)')


def _search(query_codes, database: engine.Database, topk: int,
            chunk_size: int | None) -> tuple[np.ndarray, np.ndarray]:
  """(distances int32 [Q, T], indices int64 [Q, T]) of the topk nearest by (distance, index):
  the engine's `nearest` tally, no relevance."""
  _check_topk(topk, database.num_items)
  dists, indices = [], []
  for chunk in engine.scan(query_codes, database, [(None, engine.Tallies(nearest=int(topk)))],
                           chunk_size=chunk_size, few_queries=True):
    dist_QxT, index_QxT = chunk.nearest()
    dists.append(dist_QxT)
    indices.append(index_QxT)
  if not dists:
    return np.zeros((0, topk), np.int32), np.zeros((0, topk), np.int64)
  return np.concatenate(dists).astype(np.int32), np.concatenate(indices).astype(np.int64)


def hamming_topk(query_codes, db_codes, topk: int, *,
                 chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Exact topk nearest database codes of each query by Hamming distance, ties by index.

  Args:
    query_codes: packed uint8 [Q, P] (or ±1 [Q, K]). db_codes: the same kind, [N, P].
    topk: neighbours per query, 1 ≤ topk ≤ N.
    chunk_size: queries per step (default: ~2**24 query·item pairs per device).

  Returns:
    (distances int32 [Q, T] ascending, indices int64 [Q, T] into db_codes), T = topk.
  """
  query_QxU, db_NxU = codes_lib.code_words(query_codes), codes_lib.code_words(db_codes)
  if query_QxU.shape[1] != db_NxU.shape[1]:
    raise SearchError(f'code lengths differ: query {np.shape(query_codes)}, '
                      f'database {np.shape(db_codes)}')
  _check_topk(topk, len(db_NxU))
  return _search(query_codes, engine.Database.of(db_NxU), topk, chunk_size)


@dataclasses.dataclass
class HammingIndex:
  """Packed database codes (and optionally labels) searchable by Hamming distance.

  Attributes:
    db_codes: packed uint8 [N, P]. bits: code length K ≤ 8·P.
    db_labels: class ids [N] or multi-hot [N, L], or None.
    extras: the other arrays of a loaded `codes.npz` (query codes, indices, dataset name).
    backend: 'jax' (linear scan on the devices), 'faiss' (faiss IndexBinaryFlat, CPU) or
      'mih' (multi-index hashing, falling back to the linear scan): the same neighbours in
      the same order whichever it is (`hashjax.retrieval.backends`).
  """
  db_codes: np.ndarray
  bits: int
  db_labels: np.ndarray | None = None
  extras: dict = dataclasses.field(default_factory=dict)
  backend: str = 'jax'
  # name → (codes array, what was built from it: device copy, faiss index, MIH tables), shared
  # with snapshots; an entry is valid while db_codes is that very array.
  _cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def __post_init__(self):
    self.db_codes = np.asarray(self.db_codes)
    if self.db_codes.dtype != np.uint8 or self.db_codes.ndim != 2:
      raise SearchError(f'db_codes must be packed uint8 [N, P], got {self.db_codes.dtype} '
                        f'of shape {self.db_codes.shape}')
    if not 0 < self.bits <= 8 * self.db_codes.shape[1]:
      raise SearchError(f'bits={self.bits} does not fit {self.db_codes.shape[1]} bytes per code')
    if self.db_labels is not None and len(self.db_labels) != len(self.db_codes):
      raise SearchError(f'{len(self.db_codes)} codes but {len(self.db_labels)} labels')
    try:
      backends.check_backend(self.backend)
    except BackendError as e:
      raise SearchError(str(e)) from None

  def __len__(self) -> int:
    return len(self.db_codes)

  def _built(self, codes: np.ndarray, name: str, build):
    """What `build(codes)` makes, cached for this very codes array (until `add`)."""
    cached = self._cache.get(name)
    if cached is None or cached[0] is not codes:
      cached = (codes, build(codes))
      self._cache[name] = cached
    return cached[1]

  def _linear(self, codes: np.ndarray, query_QxP, topk: int):
    database = self._built(codes, 'device', engine.Database.of)
    return _search(query_QxP, database, topk, None)

  def search(self, query_codes, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances int32 [Q, T], indices int64 [Q, T]) of the topk nearest items, T = topk,
    ties by index, by the index's backend. What a backend builds (the database on the
    devices, faiss's index, the MIH tables) is kept until `add`."""
    codes = self.db_codes
    query = np.asarray(query_codes)
    query = query if query.dtype == np.uint8 else codes_lib.pack_codes(query)
    if query.ndim != 2 or query.shape[1] != codes.shape[1]:
      raise SearchError(f'query codes must be packed uint8 [Q, {codes.shape[1]}] (or ±1 '
                        f'[Q, {self.bits}]), got shape {np.shape(query_codes)}')
    if self.backend == 'jax':
      return self._linear(codes, query, topk)
    _check_topk(topk, len(codes))
    if self.backend == 'faiss':
      try:
        index = self._built(codes, 'faiss', backends.faiss_index)
      except BackendError as e:
        raise SearchError(str(e)) from None
      return backends.faiss_topk(index, query, int(topk))
    tables = self._built(codes, 'mih', lambda c: mih.MultiIndex.build(c, self.bits))
    dist, ids, fallbacks = tables.search(query, int(topk),
                                         functools.partial(self._linear, codes))
    self._cache['mih_fallbacks'] = self._cache.get('mih_fallbacks', 0) + fallbacks
    return dist, ids

  @property
  def mih_fallbacks(self) -> int:
    """Queries the 'mih' backend has answered by the linear scan so far."""
    return self._cache.get('mih_fallbacks', 0)

  def snapshot(self) -> 'HammingIndex':
    """The index as it is now; later `add`s do not change it (arrays shared, not copied), so
    a search and the labels of its results always agree while other threads add."""
    codes = self.db_codes  # codes first: `add` extends the labels before them, so the labels
    labels = self.db_labels  # read now cover at least these codes
    return HammingIndex(codes, self.bits, None if labels is None else labels[:len(codes)],
                        self.extras, self.backend, self._cache)

  def check_add(self, codes_MxP, labels=None) -> np.ndarray:
    """The codes as an array when `add` would take them (and their labels); else SearchError."""
    codes_MxP = np.asarray(codes_MxP)
    if codes_MxP.dtype != np.uint8 or codes_MxP.shape[1:] != self.db_codes.shape[1:]:
      raise SearchError(f'added codes must be packed uint8 [M, {self.db_codes.shape[1]}], got '
                        f'{codes_MxP.dtype} of shape {codes_MxP.shape}')
    self.check_labels(labels, len(codes_MxP))
    return codes_MxP

  def check_labels(self, labels, count: int) -> None:
    """SearchError unless `labels` fit `count` added codes: None exactly when the index has no
    labels, else [count] or [count, L] like the index's."""
    if (labels is None) != (self.db_labels is None) or (labels is not None and (
        np.shape(labels)[0] != count or np.shape(labels)[1:] != self.db_labels.shape[1:])):
      raise SearchError('labels must be given for every added code, shaped like the index\'s, '
                        'exactly when the index has labels (it has '
                        f'{"none" if self.db_labels is None else "labels"})')

  def add(self, codes_MxP, labels=None) -> None:
    """Appends packed uint8 codes [M, P] (and their labels, [M] or [M, L], when the index has
    labels) at the end: they get database indices len(self) .. len(self)+M−1. Searches
    running meanwhile see the index before or after the add, never a mix (not thread-safe
    against another `add`)."""
    codes_MxP = self.check_add(codes_MxP, labels)
    if labels is not None:
      self.db_labels = np.concatenate([self.db_labels, np.asarray(labels,
                                                                  self.db_labels.dtype)])
    self.db_codes = np.concatenate([self.db_codes, codes_MxP])

  def save(self, path: str) -> None:
    """Writes the `codes.npz` format (db_codes, db_labels, bits, plus any extras); with the
    'mih' backend also its tables, so `load` need not build them again."""
    arrays = dict(self.extras)
    arrays.update(db_codes=self.db_codes, bits=np.int64(self.bits))
    if self.backend != 'jax':
      arrays['backend'] = np.str_(self.backend)
    if self.backend == 'mih':
      codes = self.db_codes
      arrays.update(self._built(codes, 'mih', lambda c: mih.MultiIndex.build(c, self.bits)
                                ).arrays())
    if self.db_labels is not None:
      arrays['db_labels'] = np.asarray(self.db_labels)
    with open(path, 'wb') as f:
      np.savez(f, **arrays)

  @classmethod
  def load(cls, path: str) -> 'HammingIndex':
    """Reads a `codes.npz` written by training (or by `save`)."""
    try:
      with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
      raise SearchError(f'{path} does not exist; train first, or point at a run '
                        'directory') from None
    except UNREADABLE_NPZ_ERRORS as e:
      raise SearchError(f'{path} is not a readable codes.npz ({e}); rerun the train.py '
                        'command of the run: a finished run evaluates again and rewrites '
                        'it') from None
    missing = [name for name in ('db_codes', 'bits') if name not in arrays]
    if missing:
      raise SearchError(f'{path} lacks {", ".join(missing)}; is it a codes.npz from training?')
    db_codes, bits = arrays.pop('db_codes'), int(arrays.pop('bits'))
    tables = {name: arrays.pop(name) for name in list(arrays) if name.startswith('mih_')}
    labels, backend = arrays.pop('db_labels', None), str(arrays.pop('backend', 'jax'))
    index = cls(db_codes=db_codes, bits=bits, db_labels=labels, extras=arrays, backend=backend)
    offsets = tables.get('mih_member_offsets')
    if offsets is not None and len(offsets) and offsets[-1] == len(db_codes):
      index._cache['mih'] = (index.db_codes, mih.MultiIndex.from_arrays(tables, bits))
    return index

