"""Searches a trained model's database from the command line: the nearest database items of
one query of the run's codes.npz, printed and optionally drawn as a PNG grid.

  python -m hashjax.commands.search --workdir=RUN --query_index=I [--topk=10] [--out=grid.png]

`--out=FOLDER` (an existing folder, or a path ending in '/') writes FOLDER/query_<I>_top<T>.png.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from hashjax.data import manifest, sources
from hashjax.hashing import job as hashing_job
from hashjax.hashing import update
from hashjax.retrieval.search import CODES_FILE, HammingIndex
from hashjax.runtime import cli, pictures
from hashjax.runtime.errors import SearchError

PROG = 'search'


def _label_text(label) -> str:
  label = np.asarray(label)
  return str(int(label)) if label.ndim == 0 else ','.join(map(str, np.flatnonzero(label)))


def _run_source(workdir: str, index: HammingIndex):
  """The run's data numbered as its codes are: read through its config.json (image size,
  class list) and checked against its data.json; codes.npz alone names only its dataset."""
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    return sources.load_source(str(index.extras['dataset']))
  cfg, _ = update.base_config(workdir)
  manifest.check(workdir, cfg.dataset, 'draw its neighbours')
  return hashing_job.load_data(cfg)[0]


def _write_grid(workdir: str, index: HammingIndex, query_index: int, neighbours_T: np.ndarray,
                out: str) -> None:
  for name in ('dataset', 'db_indices', 'query_indices'):
    if name not in index.extras:
      raise SearchError(f'codes.npz lacks {name!r}, needed to find the images for --out')
  source = _run_source(workdir, index)
  ids = np.concatenate([index.extras['query_indices'][[query_index]],
                        index.extras['db_indices'][neighbours_T]])
  images = np.asarray(source.images(ids))
  scale = max(1, 64 // images.shape[1])
  grid = pictures.make_grid(images, ncol=len(images), gap=max(2, images.shape[2] // 8),
                              scale=scale)
  if not pictures.save_png(out, grid):
    raise SearchError(f'could not write {out}: the disk is full')


def _out_path(out: str, query_index: int, topk: int) -> str:
  """The PNG path for --out: a folder (an existing one, or any path ending in '/') gets
  `query_<I>_top<T>.png` inside it; missing folders are created."""
  if out.endswith(os.sep) or os.path.isdir(out):
    out = os.path.join(out, f'query_{query_index}_top{topk}.png')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  return out


def _parse(argv):
  parser = cli.OneLineParser(
      prog=PROG, description='Nearest database items of one query from a training run.')
  parser.add_argument('--workdir', required=True, help='run directory holding codes.npz')
  parser.add_argument('--query_index', type=int, required=True,
                      help='row of query_codes in codes.npz')
  parser.add_argument('--topk', type=int, default=10, help='number of neighbours (default 10)')
  parser.add_argument('--out', default=None,
                      help='write a PNG grid: query, then neighbours; a folder (or a path '
                      "ending in '/') gets query_<I>_top<T>.png inside it")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
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
      raise SearchError(f'--query_index={args.query_index} is out of range '
                        f'0..{len(queries) - 1}')
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
      _write_grid(args.workdir, index, args.query_index, index_1xT[0], out)
      print(f'wrote {out}')
  except (SearchError, ValueError, OSError) as e:  # errors.DataError is a ValueError
    return cli.fail(PROG, str(e))
  return 0


if __name__ == '__main__':
  sys.exit(main())
