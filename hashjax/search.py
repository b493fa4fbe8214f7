"""Exact Hamming nearest-neighbour search over packed codes, and the `search` command.

`hamming_topk` ranks by Hamming distance with ties broken by database index (the same order as
`metrics` with `ties='index'`), without sorting whole rows (see `hashjax.codes`). Queries run
in chunks of about 2**24 query·item pairs per device, split over all devices on the 'data'
axis; memory is O(chunk · N) bytes.

Command line (reads the `codes.npz` that training writes to its workdir):

  python -m hashjax.search --workdir=RUN --query-index=I [--topk=10] [--out=grid.png]

`--out=FOLDER` (an existing folder, or a path ending in '/') writes FOLDER/query_<I>_top<T>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from hashjax import codes as codes_lib
from hashjax import images as images_lib
from hashjax import mih
from hashjax import parallel
from hashjax import ranking
from hashjax import search_backends as backends
from hashjax import selection
from hashjax.data import UNREADABLE_NPZ_ERRORS

CODES_FILE = 'codes.npz'


class SearchError(ValueError):
  """Bad input to a search (topk, query index, a missing or malformed codes file)."""


@functools.lru_cache(maxsize=None)
def _topk_step(topk: int, bits: int):
  # Two programs, so that every pass of the selection reads the distances from memory.
  distances = parallel.local_query_jit(
      lambda query_QxU, db_NxU, num_valid: selection.distances_and_sample(
          query_QxU, db_NxU, num_valid, bits), 1, 2)
  def nearest(dist_QxN, sample_QxS):  # in index order; _search_words orders them
    index_QxT = selection.nearest_in_index_order(dist_QxN, topk, bits, sample_QxS)
    return jnp.take_along_axis(dist_QxN, index_QxT, axis=1), index_QxT
  nearest = parallel.local_query_jit(nearest, 2, 0)
  return lambda query_QxU, db_NxU, num_valid: nearest(*distances(query_QxU, db_NxU, num_valid))


def _check_topk(topk, num_db: int) -> None:
  if not isinstance(topk, (int, np.integer)) or not 1 <= topk <= num_db:
    raise SearchError(f'topk={topk!r} must be an integer in 1..{num_db} (the database size)')


def _device_database(db_NxU: np.ndarray):
  """The word codes padded to `codes.row_bucket` rows, on the devices (one compiled search
  serves every database size in the bucket)."""
  return jax.device_put(codes_lib.pad_rows(db_NxU, codes_lib.row_bucket(len(db_NxU))))


def _search_words(query_QxU: np.ndarray, db_dev, num_db: int, topk: int,
                  chunk_size: int | None) -> tuple[np.ndarray, np.ndarray]:
  if query_QxU.shape[1] != db_dev.shape[1]:
    raise SearchError(f'code lengths differ: query {32 * query_QxU.shape[1]} bits, '
                      f'database {32 * db_dev.shape[1]} bits (as 32-bit words)')
  _check_topk(topk, num_db)
  step = _topk_step(int(topk), 32 * db_dev.shape[1])
  num_valid = np.int32(num_db)
  chunk = codes_lib.query_chunk_size(num_db, chunk_size)
  if chunk_size is None:  # a few queries (a served search): pad them to a power of two only
    devices = jax.local_device_count()
    chunk = min(chunk, devices * (1 << max(0, -(-len(query_QxU) // devices) - 1).bit_length()))
  dists, indices = [], []
  run = lambda start, stop: step(codes_lib.pad_chunk(query_QxU[start:stop], chunk), db_dev,
                                 num_valid)
  for start, stop, (dist_QxT, index_QxT) in codes_lib.dispatch_ahead(run, len(query_QxU),
                                                                      chunk):
    dist_QxT, index_QxT = (np.asarray(a)[:stop - start] for a in (dist_QxT, index_QxT))
    order_QxT = ranking.order_by_distance(dist_QxT)
    dists.append(np.take_along_axis(dist_QxT, order_QxT, axis=1))
    indices.append(np.take_along_axis(index_QxT, order_QxT, axis=1))
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
  # One search: pad to ALIGN only (the buckets of `_device_database` serve growing indexes).
  db_dev = jax.device_put(codes_lib.pad_rows(db_NxU))
  return _search_words(query_QxU, db_dev, len(db_NxU), topk, chunk_size)


@dataclasses.dataclass
class HammingIndex:
  """Packed database codes (and optionally labels) searchable by Hamming distance.

  Attributes:
    db_codes: packed uint8 [N, P]. bits: code length K ≤ 8·P.
    db_labels: class ids [N] or multi-hot [N, L], or None.
    extras: the other arrays of a loaded `codes.npz` (query codes, indices, dataset name).
    backend: 'jax' (linear scan on the devices), 'faiss' (faiss IndexBinaryFlat, CPU) or
      'mih' (multi-index hashing, falling back to the linear scan): the same neighbours in
      the same order whichever it is (`hashjax.search_backends`).
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
    except backends.BackendError as e:
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
    device = self._built(codes, 'device', lambda c: _device_database(codes_lib.code_words(c)))
    return _search_words(codes_lib.code_words(query_QxP), device, len(codes), topk, None)

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
      except backends.BackendError as e:
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
      raise SearchError(f'{path} does not exist; train first, or point at a run directory') from None
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


def _label_text(label) -> str:
  label = np.asarray(label)
  return str(int(label)) if label.ndim == 0 else ','.join(map(str, np.flatnonzero(label)))


def _write_grid(index: HammingIndex, query_index: int, neighbours_T: np.ndarray,
                out: str) -> None:
  from hashjax import data as data_lib  # pylint: disable=g-import-not-at-top
  for name in ('dataset', 'db_indices', 'query_indices'):
    if name not in index.extras:
      raise SearchError(f'codes.npz lacks {name!r}, needed to find the images for --out')
  source = data_lib.load_source(str(index.extras['dataset']))
  ids = np.concatenate([index.extras['query_indices'][[query_index]],
                        index.extras['db_indices'][neighbours_T]])
  images = np.asarray(source.images(ids))
  scale = max(1, 64 // images.shape[1])
  grid = images_lib.make_grid(images, ncol=len(images), gap=max(2, images.shape[2] // 8),
                              scale=scale)
  if not images_lib.save_png(out, grid):
    raise SearchError(f'could not write {out}: the disk is full')


def _out_path(out: str, query_index: int, topk: int) -> str:
  """The PNG path for --out: a folder (an existing one, or any path ending in '/') gets
  `query_<I>_top<T>.png` inside it; missing folders are created."""
  if out.endswith(os.sep) or os.path.isdir(out):
    out = os.path.join(out, f'query_{query_index}_top{topk}.png')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  return out


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog='search', description='Nearest database items of one query from a training run.')
  parser.add_argument('--workdir', required=True, help='run directory holding codes.npz')
  parser.add_argument('--query-index', type=int, required=True,
                      help='row of query_codes in codes.npz')
  parser.add_argument('--topk', type=int, default=10, help='number of neighbours (default 10)')
  parser.add_argument('--out', default=None,
                      help='write a PNG grid: query, then neighbours; a folder (or a path '
                      "ending in '/') gets query_<I>_top<T>.png inside it")

  def one_line_error(message):
    print(f'search: error: {message}', file=sys.stderr)
    sys.exit(2)

  parser.error = one_line_error
  return parser.parse_args(argv)


def run(argv=None) -> int:
  """The `search` command; returns the exit code (2 on bad input)."""
  args = _parse(argv)
  try:
    if not os.path.isdir(args.workdir):
      raise SearchError(f'workdir {args.workdir!r} does not exist')
    index = HammingIndex.load(os.path.join(args.workdir, CODES_FILE))
    if 'query_codes' not in index.extras:
      raise SearchError('codes.npz lacks query_codes')
    queries = index.extras['query_codes']
    if not 0 <= args.query_index < len(queries):
      raise SearchError(f'--query-index={args.query_index} is out of range 0..{len(queries) - 1}')
    if args.topk < 1:
      raise SearchError(f'--topk={args.topk} must be at least 1')
    topk = min(args.topk, len(index))
    dist_1xT, index_1xT = index.search(queries[[args.query_index]], topk)
    query_labels = index.extras.get('query_labels')
    head = f'query {args.query_index}'
    if query_labels is not None:
      head += f' (label {_label_text(query_labels[args.query_index])})'
    print(f'{head}: {topk} nearest of {len(index)} database items, {index.bits} bits')
    print('rank  index  distance  label')
    for rank, (i, d) in enumerate(zip(index_1xT[0], dist_1xT[0]), start=1):
      label = '-' if index.db_labels is None else _label_text(index.db_labels[i])
      print(f'{rank:4d}  {i:5d}  {d:8d}  {label}')
    if args.out:
      out = _out_path(args.out, args.query_index, topk)
      _write_grid(index, args.query_index, index_1xT[0], out)
      print(f'wrote {out}')
  except (SearchError, ValueError, OSError) as e:  # data.DataError is a ValueError
    print(f'search: error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  return 0


def main():
  sys.exit(run())


if __name__ == '__main__':
  main()
