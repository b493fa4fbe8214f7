"""Exact Hamming nearest-neighbour search over packed codes, and the `search` command.

`hamming_topk` ranks by Hamming distance with ties broken by database index (the same order as
`metrics` with `ties='index'`), without sorting whole rows (see `hashjax.codes`). Queries run
in chunks of about 2**24 query·item pairs per device, split over all devices on the 'data'
axis; memory is O(chunk · N) bytes.

Command line (reads the `codes.npz` that training writes to its workdir):

  python -m hashjax.search --workdir=RUN --query-index=I [--k=10] [--out=grid.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys

import jax
import numpy as np

from hashjax import codes as codes_lib
from hashjax import images as images_lib
from hashjax import parallel

CODES_FILE = 'codes.npz'


class SearchError(ValueError):
  """Bad input to a search (k, query index, a missing or malformed codes file)."""


@functools.lru_cache(maxsize=None)
def _topk_step(k: int, num_valid: int, bits: int):
  def step(query_QxW, db_NxW):
    dist_QxN = codes_lib.word_distances(query_QxW, db_NxW, num_valid, bits)
    return codes_lib.topk_from_distances(dist_QxN, k, bits)
  return parallel.local_query_jit(step, 1, 1)


def hamming_topk(query_codes, db_codes, k: int, *,
                 chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Exact k nearest database codes of each query by Hamming distance, ties by index.

  Args:
    query_codes: packed uint8 [Q, B] (or ±1 [Q, K]). db_codes: the same kind, [N, B].
    k: neighbours per query, 1 ≤ k ≤ N.
    chunk_size: queries per step (default: ~2**24 query·item pairs per device).

  Returns:
    (distances int32 [Q, k] ascending, indices int64 [Q, k] into db_codes).
  """
  query_QxW, db_NxW = codes_lib.code_words(query_codes), codes_lib.code_words(db_codes)
  if query_QxW.shape[1] != db_NxW.shape[1]:
    raise SearchError(f'code lengths differ: query {np.shape(query_codes)}, '
                      f'database {np.shape(db_codes)}')
  num_db = len(db_NxW)
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= num_db:
    raise SearchError(f'k={k!r} must be an integer in 1..{num_db} (the database size)')
  bits = 32 * db_NxW.shape[1]
  step = _topk_step(int(k), num_db, bits)
  db_dev = jax.device_put(codes_lib.pad_rows(db_NxW))
  chunk = codes_lib.query_chunk_size(num_db, chunk_size)
  dists, indices = [], []
  for start, stop in codes_lib.query_chunks(len(query_QxW), chunk):
    dist_QxK, index_QxK = step(codes_lib.pad_chunk(query_QxW[start:stop], chunk), db_dev)
    dists.append(np.asarray(dist_QxK)[:stop - start])
    indices.append(np.asarray(index_QxK)[:stop - start])
  if not dists:
    return np.zeros((0, k), np.int32), np.zeros((0, k), np.int64)
  return np.concatenate(dists).astype(np.int32), np.concatenate(indices).astype(np.int64)


@dataclasses.dataclass
class HammingIndex:
  """Packed database codes (and optionally labels) searchable by Hamming distance.

  Attributes:
    db_codes: packed uint8 [N, B]. bits: code length K ≤ 8·B.
    db_labels: class ids [N] or multi-hot [N, L], or None.
    extras: the other arrays of a loaded `codes.npz` (query codes, indices, dataset name).
  """
  db_codes: np.ndarray
  bits: int
  db_labels: np.ndarray | None = None
  extras: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.db_codes = np.asarray(self.db_codes)
    if self.db_codes.dtype != np.uint8 or self.db_codes.ndim != 2:
      raise SearchError(f'db_codes must be packed uint8 [N, B], got {self.db_codes.dtype} '
                        f'of shape {self.db_codes.shape}')
    if not 0 < self.bits <= 8 * self.db_codes.shape[1]:
      raise SearchError(f'bits={self.bits} does not fit {self.db_codes.shape[1]} bytes per code')
    if self.db_labels is not None and len(self.db_labels) != len(self.db_codes):
      raise SearchError(f'{len(self.db_codes)} codes but {len(self.db_labels)} labels')

  def __len__(self) -> int:
    return len(self.db_codes)

  def search(self, query_codes, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances int32 [Q, k], indices int64 [Q, k]) of the k nearest items, ties by index."""
    return hamming_topk(query_codes, self.db_codes, k)

  def save(self, path: str) -> None:
    """Writes the `codes.npz` format (db_codes, db_labels, bits, plus any extras)."""
    arrays = dict(self.extras)
    arrays.update(db_codes=self.db_codes, bits=np.int64(self.bits))
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
    except (OSError, ValueError) as e:
      raise SearchError(f'{path} is not a readable codes.npz ({e})') from None
    missing = [name for name in ('db_codes', 'bits') if name not in arrays]
    if missing:
      raise SearchError(f'{path} lacks {", ".join(missing)}; is it a codes.npz from training?')
    db_codes, bits = arrays.pop('db_codes'), int(arrays.pop('bits'))
    return cls(db_codes=db_codes, bits=bits, db_labels=arrays.pop('db_labels', None),
               extras=arrays)


def _label_text(label) -> str:
  label = np.asarray(label)
  return str(int(label)) if label.ndim == 0 else ','.join(map(str, np.flatnonzero(label)))


def _write_grid(index: HammingIndex, query_index: int, neighbours_K: np.ndarray,
                out: str) -> None:
  from hashjax import data as data_lib  # pylint: disable=g-import-not-at-top
  for name in ('dataset', 'db_indices', 'query_indices'):
    if name not in index.extras:
      raise SearchError(f'codes.npz lacks {name!r}, needed to find the images for --out')
  source = data_lib.load_source(str(index.extras['dataset']))
  ids = np.concatenate([index.extras['query_indices'][[query_index]],
                        index.extras['db_indices'][neighbours_K]])
  images = np.asarray(source.images(ids))
  scale = max(1, 64 // images.shape[1])
  grid = images_lib.make_grid(images, ncol=len(images), gap=max(2, images.shape[2] // 8),
                              scale=scale)
  if not images_lib.save_png(out, grid):
    raise SearchError(f'could not write {out}: the disk is full')


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog='search', description='Nearest database items of one query from a training run.')
  parser.add_argument('--workdir', required=True, help='run directory holding codes.npz')
  parser.add_argument('--query-index', type=int, required=True,
                      help='row of query_codes in codes.npz')
  parser.add_argument('--k', type=int, default=10, help='number of neighbours (default 10)')
  parser.add_argument('--out', default=None, help='write a PNG grid: query, then neighbours')

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
    if args.k < 1:
      raise SearchError(f'--k={args.k} must be at least 1')
    k = min(args.k, len(index))
    dist_1xK, index_1xK = index.search(queries[[args.query_index]], k)
    query_labels = index.extras.get('query_labels')
    head = f'query {args.query_index}'
    if query_labels is not None:
      head += f' (label {_label_text(query_labels[args.query_index])})'
    print(f'{head}: {k} nearest of {len(index)} database items, {index.bits} bits')
    print('rank  index  distance  label')
    for rank, (i, d) in enumerate(zip(index_1xK[0], dist_1xK[0]), start=1):
      label = '-' if index.db_labels is None else _label_text(index.db_labels[i])
      print(f'{rank:4d}  {i:5d}  {d:8d}  {label}')
    if args.out:
      _write_grid(index, args.query_index, index_1xK[0], args.out)
      print(f'wrote {args.out}')
  except (SearchError, ValueError, OSError) as e:  # data.DataError is a ValueError
    print(f'search: error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  return 0


def main():
  sys.exit(run())


if __name__ == '__main__':
  main()
