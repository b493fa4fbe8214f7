"""Retrieval by content: what label-free, supervised and graded hashing capture.

  python -m hashjax.experiments.semantics --mnist=PATH/mnist_t10k.npz --workers=2 \
      [--quick] [--resume] [--out docs/semantics] [--report docs/SEMANTICS.md]

Run from the repository root (the cells start from configs/hashnet_mnist.py). Two data sets,
32 and 64 bits, seeds {0, 1, 2}:
  * `mnist` — the MNIST test set (1,000 queries, 9,000 database, 5,000 training images from
    it, 300 steps): label-free HashNet (`loss.similarity='views'`, balanced weighting), the
    same without weighting, LSH and ITQ on raw pixels (the label-free baselines) and
    supervised HashNet. Each is scored on copy detection (held-out transformations of the
    queries, searched among the database plus the originals), on 1 %-nearest-neighbour
    ground truth in pixel space (mAP@1000) and on class mAP@1000;
  * `mosaics` — 2×2 mosaics of MNIST digits (`mosaic:npz:PATH`, 56×56 px, multi-hot over the
    ten digits; 1,000 queries, 9,000 database, 5,000 training, 200 steps): HashNet with hard
    similarity (share a digit) against soft similarity (the Jaccard index of the digit sets),
    scored by NDCG@100 (relevance = digits shared) and class mAP@1000 (relevant = shares a
    digit).

Each (data, method, bits, seed) is a unit of `grid.run`, saved in --workdir as it finishes;
`--resume` keeps the saved units. The seed-0, 64-bit unit of every method draws its picture
of queries and their top-10 (`<out>/<data>_<method>.png`). Writes `<out>/results.json` and the
page (`semantics_report`); `--render_only` rewrites the page from results.json.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any

import numpy as np

from configs import hashnet_mnist
from hashjax.data import sources
from hashjax.experiments import grid, hashing_cell, semantics_report
from hashjax.experiments.hashnet_ablation import COMMON, schedule_overrides
from hashjax.hashing import encoding, evaluation, job
from hashjax.hashing.config import HashConfig, hash_config
from hashjax.retrieval import codes as codes_lib
from hashjax.retrieval import search
from hashjax.retrieval.metrics import metric_key
from hashjax.runtime import parallel
from hashjax.runtime.errors import DataError
from hashjax.runtime.settings import override

PROG = 'semantics'
BITS = (32, 64)
SEEDS = (0, 1, 2)
SHALLOW = hashing_cell.SHALLOW
# Every item gets the same code, so every item is tied: the expected-ties scores are those of
# a random ranking (chance); the index-ties scores rank by database index.
CHANCE = 'chance'
PICTURE_BITS, PICTURE_ROWS, PICTURE_TOPK = 64, 6, 10
# name → overrides of the data set's config; shallow methods are fitted on its split.
DEEP: dict[str, dict[str, Any]] = {
    'views': {'loss.similarity': 'views'},
    'views_no_weighting': {'loss.similarity': 'views', 'loss.weighting': 'none'},
    'supervised': {},
    'hard': {},
    'soft': {'loss.similarity': 'soft'},
}


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """One data set: its overrides of configs/hashnet_mnist.py (with num_steps), its methods,
  the eval_extra metrics it is scored on and their cutoff (None: the config's map_topk)."""
  name: str
  overrides: dict[str, Any]
  methods: tuple[str, ...]
  metrics: tuple[str, ...]
  extra_topk: int | None = None
  bits: tuple[int, ...] = BITS
  seeds: tuple[int, ...] = SEEDS


PLANS = ('full', 'quick')


def grid_settings(plan: str, mnist: str | None) -> list[DataSettings]:
  """The two data sets ('quick': 64 bits, seed 0, a tenth of the steps; a smoke test)."""
  if plan not in PLANS:
    raise ValueError(f'unknown plan {plan!r}; accepted: {", ".join(PLANS)}')
  path = mnist or ''
  full = [
      DataSettings('mnist', {'dataset': f'npz:{path}', 'num_steps': 300},
                   methods=(CHANCE,) + SHALLOW + ('views', 'views_no_weighting',
                                                  'supervised'),
                   metrics=('copies', 'neighbours')),
      DataSettings('mosaics', {'dataset': f'mosaic:npz:{path}', 'num_steps': 200,
                               'split.query_per_class': None, 'split.num_query': 1000,
                               'split.train_per_class': None, 'split.num_train': 5000},
                   methods=(CHANCE, 'hard', 'soft'), metrics=('ndcg',), extra_topk=100),
  ]
  if plan == 'full':
    return full
  tenth = lambda s: {**s.overrides, 'num_steps': max(20, s.overrides['num_steps'] // 10)}
  return [dataclasses.replace(s, overrides=tenth(s), bits=(PICTURE_BITS,), seeds=(0,))
          for s in full]


def cell_config(settings: DataSettings, method: str, bits: int, seed: int) -> HashConfig:
  """configs/hashnet_mnist.py with the ablation grid's COMMON settings and schedules, the data
  set's overrides, the method's (a shallow method takes the data set's first deep method's
  config, for its split), bits and seed."""
  if method in SHALLOW + (CHANCE,):
    method = next(m for m in settings.methods if m not in SHALLOW + (CHANCE,))
  config = hashnet_mnist.get_config()
  config.lock()
  steps = settings.overrides['num_steps']
  return hash_config(override(config, {**COMMON, **settings.overrides,
                                        **schedule_overrides(steps), **DEEP[method],
                                        'bits': bits, 'seed': seed}))


def units(settings_list: list[DataSettings]) -> list[tuple[str, str, int, int]]:
  """(data, method, bits, seed) in a fixed order: data set, seed, bits, method."""
  return [(s.name, m, b, seed) for s in settings_list for seed in s.seeds for b in s.bits
          for m in s.methods]


def _encoder(cfg: HashConfig, method: str, source, split):
  """encode(source, indices) → outputs whose signs are the codes [len(indices), K]."""
  if method == CHANCE:
    return lambda src, idx: np.ones((len(idx), cfg.bits), np.float32)
  if method in SHALLOW:
    return hashing_cell.shallow_encoder(method, source, split, cfg.bits, cfg.seed)
  state, _ = hashing_cell.train(cfg, source, split)
  mesh = parallel.make_mesh()
  return lambda src, idx: encoding.encode(state, src, idx, cfg.eval_batch_size, mesh)


def _picture(path: str, data: str, encode, source, split, query_codes, db_codes,
             cache: dict) -> dict[str, Any]:
  """Draws PICTURE_ROWS queries and their top-10 (mnist: copies of the queries searched among
  the database plus the originals, as copy detection does; mosaics: the queries themselves
  in the database); returns the item ids and distances it showed."""
  picks = np.linspace(0, len(split.query) - 1, PICTURE_ROWS).round().astype(np.int64)
  if data == 'mnist':
    copies = cache['copies']
    images, shown_codes = copies.images(picks), encode(copies, picks)
    db_codes = np.concatenate([db_codes, query_codes])
    items = np.concatenate([split.database, split.query])
  else:
    images, shown_codes = source.images(split.query[picks]), query_codes[picks]
    items = split.database
  dist, idx = search.hamming_topk(np.asarray(codes_lib.sign_codes(shown_codes)), db_codes,
                                  PICTURE_TOPK)
  semantics_report.draw_examples(path, data, images, source, split.query[picks], items[idx],
                                 dist)
  return {'queries': split.query[picks].tolist(), 'items': items[idx].tolist(),
          'distances': dist.tolist()}


def run_unit(settings_by_name: dict[str, DataSettings], picture_dir: str,
             key: tuple[str, str, int, int]) -> dict[str, Any]:
  """Trains (or fits) and scores one unit: class mAP at the config's map_topk (index ties and
  the [worst, best] interval) and the data set's eval_extra metrics.

  Returns:
    {'cell': {'data', 'method', 'bits', 'seed', 'seconds', 'map', 'map_interval', and the
    eval_extra entries}, 'picture': what the picture showed, or None}.
  """
  data, method, bits, seed = key
  settings = settings_by_name[data]
  t0 = time.perf_counter()
  cfg = cell_config(settings, method, bits, seed)
  source, split = job.load_data(cfg)
  encode = _encoder(cfg, method, source, split)
  sign = lambda idx: np.asarray(codes_lib.sign_codes(encode(source, idx)))
  query_codes, db_codes = sign(split.query), sign(split.database)
  cache: dict[str, Any] = {}
  scores = evaluation.score(
      query_codes, db_codes, source, split, topk=cfg.map_topk, bits=bits,
      extra=settings.metrics, seed=seed, cache=cache, encode=encode,
      extra_topk=cfg.map_topk if settings.extra_topk is None else settings.extra_topk)
  class_map = metric_key('map', cfg.map_topk)
  extra = {k: v for k, v in scores.items()
           if not k.startswith((f'{class_map}', 'map_topk', 'precision@', 'recall@'))}
  cell = {'data': data, 'method': method, 'bits': bits, 'seed': seed,
          'seconds': time.perf_counter() - t0, 'map': scores[class_map],
          'map_interval': scores[metric_key('map', cfg.map_topk, 'interval')], **extra}
  picture = None
  if seed == 0 and bits == PICTURE_BITS and method != CHANCE:
    if data == 'mnist' and 'copies' not in cache:
      raise ValueError('the mnist picture needs the copies metric')
    picture = _picture(os.path.join(picture_dir, f'{data}_{method}.png'), data, encode,
                       source, split, query_codes, db_codes, cache)
  return {'cell': cell, 'picture': picture}


def similar_fractions(settings: DataSettings) -> dict[str, float]:
  """Of the ordered training pairs i ≠ j: the fraction sharing a label (hard similarity) and
  the mean Jaccard index (soft similarity's mass; equal to the first for class ids)."""
  cfg = cell_config(settings, settings.methods[-1], BITS[0], 0)
  source, split = job.load_data(cfg)
  labels = source.labels[split.train]
  if labels.ndim == 1:
    labels = np.eye(int(labels.max()) + 1, dtype=np.int64)[labels]
  shared = (labels @ labels.T).astype(np.float64)
  sizes = labels.sum(1).astype(np.float64)
  union = sizes[:, None] + sizes[None, :] - shared
  off = ~np.eye(len(labels), dtype=bool)
  return {'hard': float((shared[off] > 0).mean()), 'soft': float((shared / union)[off].mean())}


def settings_record(settings: DataSettings) -> dict[str, Any]:
  """What results.json keeps of a data set: its settings, the HashConfig of its last deep
  method at 64 bits, seed 0 ('cell'), and the training pairs' similar fractions."""
  cfg = cell_config(settings, settings.methods[-1], PICTURE_BITS, 0)
  return {**dataclasses.asdict(settings), 'cell': dataclasses.asdict(cfg),
          'similar': similar_fractions(settings)}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parse(argv):
  parser = grid.argument_parser(PROG, __doc__.split('\n')[0], workdir=f'runs/{PROG}')
  parser.add_argument('--mnist', default=None,
                      help='npz of the MNIST test set (keys image, label); needed to run')
  parser.add_argument('--out', default='docs/semantics',
                      help='folder for results.json and the pictures')
  parser.add_argument('--report', default=None,
                      help='page path (default: SEMANTICS.md next to --out)')
  parser.add_argument('--plan', default='full', choices=PLANS, help='see grid_settings')
  parser.add_argument('--quick', action='store_true', help='same as --plan=quick')
  parser.add_argument('--render_only', action='store_true',
                      help='rewrite the page from <out>/results.json')
  args = parser.parse_args(argv)
  grid.check_arguments(parser, args)
  if args.quick:
    args.plan = 'quick'
  if not args.render_only:
    if args.mnist is None:
      parser.error('--mnist=PATH (an npz of the MNIST test set) is needed; the mosaics are '
                   'built from it')
    try:
      sources.load_source(f'npz:{args.mnist}')
    except DataError as e:
      parser.error(f'--mnist={args.mnist}: {e}')
  return args


def collect(results: dict[tuple[str, str, int, int], dict[str, Any]]) -> dict[str, Any]:
  """{'cells': [...] in unit order, 'pictures': {'<data>_<method>': shown}}."""
  pictures = {f'{key[0]}_{key[1]}': r['picture'] for key, r in results.items()
              if r['picture'] is not None}
  return {'cells': [r['cell'] for r in results.values()], 'pictures': pictures}


def _describe(key, result) -> list[str]:
  c = result['cell']
  shown = ', '.join(f'{k} {v:.4f}' for k, v in c.items()
                    if k == 'map' or k.startswith(('copy_map@', 'neighbour_map@', 'ndcg@'))
                    and not k.endswith(('_expected', '_interval')))
  return [f'{" ".join(map(str, key))}: {shown} ({c["seconds"]:.0f} s)']


def _run(args, argv: list[str], results_path: str) -> dict[str, Any]:
  """Runs the grid (`grid.run_recorded`); returns the final results. Raises grid.GridError."""
  settings_list = grid_settings(args.plan, args.mnist)
  os.makedirs(args.out, exist_ok=True)
  return grid.run_recorded(
      PROG, args, argv, results_path, units(settings_list),
      functools.partial(run_unit, {s.name: s for s in settings_list}, os.path.abspath(args.out)),
      {'settings': [settings_record(s) for s in settings_list]}, collect, _describe)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parse(argv)
  report_path = args.report or os.path.join(os.path.dirname(os.path.abspath(args.out)),
                                            'SEMANTICS.md')
  results_path = os.path.join(args.out, 'results.json')
  results = grid.results_or_run(PROG, args.render_only, results_path,
                                lambda: _run(args, argv, results_path))
  if isinstance(results, int):
    return results
  semantics_report.write(results, args.out, report_path)
  print(f'wrote {report_path} and {args.out}/', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
