"""HashNet's claims, checked: ablations, DHN and shallow baselines over code lengths.

  python -m hashjax.experiments.hashnet_ablation --mnist=PATH/mnist_t10k.npz \
      --out docs/results --workers=2 [--plan=cpu | --quick] [--resume]

Run from the repository root (the cells start from its configs/). Trains on three data sets,
at bits ∈ {16, 32, 48, 64} with seeds {0, 1, 2} (the default `--plan=full`; `--plan=cpu`
runs a subset, see `grid_settings`):
  * `digits` — scikit-learn's 8×8 digits (10 classes; sanity check, offline everywhere):
    configs/hashnet_digits.py;
  * `mnist` — the MNIST test set (`--mnist`, an npz with keys image [N,28,28(,1)] uint8 and
    label [N]), configs/hashnet_mnist.py: 1,000 queries (100/class), 9,000 database, 5,000
    training (500/class) drawn from the database; mAP@1000;
  * `mnist_pairs100` — two MNIST test digits side by side (the `pairs:npz:PATH` source:
    56×28 px, 100 classes, ~1% of pairs similar), configs/hashnet_mnist.py with 1,000
    queries, 9,000 database, 5,000 training drawn from the database; mAP@1000.
Methods: HashNet (balanced weighting + continuation), HashNet without weighting, HashNet
without continuation (β = 1, sign at test), HashNet ranked by the continuous outputs
tanh(β_T z) (no sign; the upper reference), DHN, and LSH / ITQ on raw pixels.

Each (data, method, bits, seed) is a unit of `grid.run`, saved in --workdir as it finishes;
`--resume` keeps the saved units. Writes `<out>/results.json`, `<out>/*.png` and
`RESULTS.md` (next to `<out>` by default); `--render_only` rewrites the last two from
results.json.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any

import numpy as np

from configs import hashnet_digits, hashnet_mnist
from hashjax.data import sources
from hashjax.experiments import grid, hashing_cell, hashnet_claims, report
from hashjax.experiments.hashnet_claims import CONTINUOUS, LOSS_CURVE_BITS, MNIST_SETS
from hashjax.hashing import job
from hashjax.hashing.config import HashConfig, hash_config
from hashjax.runtime.errors import DataError
from hashjax.runtime.settings import override

PROG = 'hashnet_ablation'
CONFIGS = {'hashnet_digits': hashnet_digits, 'hashnet_mnist': hashnet_mnist}
BITS = (16, 32, 48, 64)
SEEDS = (0, 1, 2)
# name → overrides of the cell's config (see `cell_config`).
METHODS: dict[str, dict[str, Any]] = {
    'hashnet': {},
    'hashnet_no_weighting': {'loss.weighting': 'none'},
    'hashnet_no_continuation': {'beta.schedule': 'constant'},
    'dhn': {'loss.name': 'dhn', 'beta.schedule': 'constant'},
}
SHALLOW = hashing_cell.SHALLOW
# Every cell: Adam at 1e-3, batch 64, and evaluation in batches of 1,000.
COMMON = {'batch_size': 64, 'learning_rate': 1e-3, 'optimizer': 'adam',
          'eval_batch_size': 1000, 'checkpoint.async_save': False}


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """One data set of the grid: the config file its cells start from, its overrides (which
  include num_steps), and which (method, bits, seed) cells run on it."""
  name: str
  config: str  # a key of CONFIGS
  overrides: dict[str, Any]
  methods: tuple[str, ...] = tuple(METHODS)
  bits: tuple[int, ...] = BITS
  seeds: tuple[int, ...] = SEEDS  # at every code length
  extra_seeds: tuple[int, ...] = ()  # at LOSS_CURVE_BITS only, for extra_seed_methods
  extra_seed_methods: tuple[str, ...] = ('hashnet', 'hashnet_no_weighting', 'dhn')
  loss_every: int = 25

  def cells(self) -> list[tuple[int, int]]:
    """(seed, bits) pairs to run, seed-major."""
    out = []
    for seed in sorted(set(self.seeds) | set(self.extra_seeds)):
      out += [(seed, b) for b in self.bits if seed in self.seeds or b == LOSS_CURVE_BITS]
    return out

  def methods_at(self, seed: int) -> tuple[str, ...]:
    if seed in self.seeds:
      return self.methods
    return tuple(m for m in self.methods if m in self.extra_seed_methods)


PLANS = ('full', 'cpu', 'quick')


def grid_settings(plan: str = 'full', mnist: str | None = None) -> list[DataSettings]:
  """The three data sets and what runs on each.

  plan: 'full' — every method × {16, 32, 48, 64} bits × 3 seeds on all three sets; 'cpu' —
    a third of the deep runs (about 45 min on 2 CPU cores): digits and MNIST at every
    code length with seed 0, and seeds 1 and 2 for HashNet (and LSH/ITQ) at 48 bits on
    MNIST; the 100-class set at 48 bits, seed 0, without the no-continuation ablation;
    'quick' — a smoke test (16 and 48 bits, seed 0, 10% of the steps; numbers mean little).
  mnist: npz of the MNIST test set (None: the MNIST sets name no file and fail if run).
  """
  if plan not in PLANS:
    raise ValueError(f'unknown plan {plan!r}; accepted: {", ".join(PLANS)}')
  path = mnist or ''
  full = [
      DataSettings('digits', 'hashnet_digits', {'num_steps': 300}),
      DataSettings('mnist', 'hashnet_mnist', {'dataset': f'npz:{path}', 'num_steps': 300}),
      DataSettings('mnist_pairs100', 'hashnet_mnist', {
          'dataset': f'pairs:npz:{path}', 'num_steps': 200, 'split.query_per_class': None,
          'split.num_query': 1000, 'split.train_per_class': None, 'split.num_train': 5000}),
  ]
  if plan == 'full':
    return full
  if plan == 'quick':
    tenth = lambda s: {**s.overrides, 'num_steps': max(20, s.overrides['num_steps'] // 10)}
    return [dataclasses.replace(s, overrides=tenth(s), bits=(16, 48), seeds=(0,)) for s in full]
  digits, mnist_set, pairs_set = full
  return [dataclasses.replace(digits, seeds=(0,)),
          dataclasses.replace(mnist_set, seeds=(0,), extra_seeds=(1, 2),
                              extra_seed_methods=('hashnet',)),
          dataclasses.replace(pairs_set, seeds=(0,), bits=(LOSS_CURVE_BITS,),
                              methods=('hashnet', 'hashnet_no_weighting', 'dhn'))]


def schedule_overrides(num_steps: int) -> dict[str, Any]:
  """β from 1 to ≈ 5 over the run, updated 10 times (HashNet reaches ≈ 7 in 10,000 steps);
  the learning rate halved at half the steps."""
  return {'beta.schedule': 'hashnet', 'beta.beta0': 1.0, 'beta.gamma': 24.0 / num_steps,
          'beta.power': 0.5, 'beta.step_size': max(1, num_steps // 10),
          'lr_decay_every': max(1, num_steps // 2), 'log_every': num_steps,
          'eval_every': num_steps, 'checkpoint_every': num_steps}


def cell_config(settings: DataSettings, method: str, bits: int, seed: int) -> HashConfig:
  """configs/<settings.config>.py with COMMON, the data set's overrides, the schedules of its
  num_steps (`schedule_overrides`), the method's overrides (METHODS), bits and seed."""
  config = CONFIGS[settings.config].get_config()
  config.lock()
  steps = settings.overrides.get('num_steps', config.num_steps)
  return hash_config(override(config, {**COMMON, **settings.overrides,
                                        **schedule_overrides(steps), **METHODS[method],
                                        'bits': bits, 'seed': seed}))


def units(settings_list: list[DataSettings]) -> list[tuple[str, str, int, int]]:
  """The grid's units (data, method, bits, seed), in a fixed order: data set, seed, bits,
  then LSH, ITQ and the deep methods."""
  return [(s.name, m, b, seed) for s in settings_list for seed, b in s.cells()
          for m in SHALLOW + s.methods_at(seed)]


def run_unit(settings_by_name: dict[str, DataSettings], key: tuple[str, str, int, int]
             ) -> dict[str, Any]:
  """Trains (or fits) and scores one unit.

  Returns:
    {'cells': [{'data', 'method', 'bits', 'seed', 'seconds', 'map', ...}] (HashNet's unit
    also gives the continuous-code cell), 'curve': held-out loss rows or None}.
  """
  data, method, bits, seed = key
  settings = settings_by_name[data]
  t0 = time.perf_counter()
  cfg = cell_config(settings, 'hashnet' if method in SHALLOW else method, bits, seed)
  source, split = job.load_data(cfg)
  cell = {'data': data, 'method': method, 'bits': bits, 'seed': seed}
  if method in SHALLOW:
    scores = hashing_cell.shallow(method, source, split, bits, seed, cfg.map_topk)
    return {'cells': [{**cell, 'seconds': time.perf_counter() - t0, **scores}], 'curve': None}
  want_curve = bits == LOSS_CURVE_BITS and seed == min(settings.seeds)
  heldout = hashing_cell.heldout_indices(split, seed) if want_curve else None
  state, curve = hashing_cell.train(cfg, source, split, heldout, settings.loss_every)
  scores = hashing_cell.evaluate(state, cfg, source, split, continuous=method == 'hashnet')
  cells = [{**cell, 'seconds': time.perf_counter() - t0, **scores['sign']}]
  if 'continuous' in scores:
    cells.append({**cell, 'method': CONTINUOUS, 'seconds': 0.0, **scores['continuous']})
  return {'cells': cells, 'curve': curve if want_curve else None}


def collect(results: dict[tuple[str, str, int, int], dict[str, Any]]) -> dict[str, Any]:
  """{'cells': [...] in unit order, 'curves': {data: {method: rows}}} from unit results."""
  out: dict[str, Any] = {'cells': [], 'curves': {}}
  for (data, method, _, _), result in results.items():
    out['cells'] += result['cells']
    if result['curve'] is not None:
      out['curves'].setdefault(data, {})[method] = result['curve']
  return out


def similar_fraction(cfg: HashConfig) -> float:
  """Fraction of similar ordered pairs i ≠ j in the training set of `cfg`."""
  source, split = job.load_data(cfg)
  counts = np.bincount(source.labels[split.train])
  n = len(split.train)
  return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def settings_record(settings: DataSettings) -> dict[str, Any]:
  """What results.json keeps of a data set: its settings, the HashConfig of its seed-0
  HashNet cell at LOSS_CURVE_BITS bits ('cell') and the similar-pair fraction."""
  cfg = cell_config(settings, 'hashnet', LOSS_CURVE_BITS, 0)
  return {**dataclasses.asdict(settings), 'cell': dataclasses.asdict(cfg),
          'similar_fraction': similar_fraction(cfg)}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parse(argv):
  parser = grid.argument_parser(PROG, __doc__.split('\n')[0], workdir=f'runs/{PROG}')
  parser.add_argument('--mnist', default=None,
                      help='npz of the MNIST test set (keys image, label); needed for the '
                           'mnist and mnist_pairs100 sets')
  parser.add_argument('--out', default='docs/results', help='folder for results.json and PNGs')
  parser.add_argument('--report', default=None,
                      help='RESULTS.md path (default: <out>/../RESULTS.md)')
  parser.add_argument('--plan', default='full', choices=PLANS, help='see grid_settings')
  parser.add_argument('--quick', action='store_true', help='same as --plan=quick')
  parser.add_argument('--data', default=None,
                      help='comma-separated subset of digits,' + ','.join(MNIST_SETS))
  parser.add_argument('--render_only', action='store_true',
                      help='rewrite RESULTS.md and the PNGs from <out>/results.json')
  args = parser.parse_args(argv)
  grid.check_arguments(parser, args)
  if args.quick:
    args.plan = 'quick'
  names = ('digits',) + MNIST_SETS
  args.data = args.data.split(',') if args.data else list(names)
  unknown = [d for d in args.data if d not in names]
  if unknown:
    parser.error(f'--data names {unknown[0]!r}; accepted: {", ".join(names)}')
  if not args.render_only and set(args.data) & set(MNIST_SETS):
    if args.mnist is None:
      parser.error('--mnist=PATH (an npz of the MNIST test set) is needed for '
                   f'{", ".join(MNIST_SETS)}; or pass --data=digits')
    try:
      sources.load_source(f'npz:{args.mnist}')
    except DataError as e:
      parser.error(f'--mnist={args.mnist}: {e}')
  return args


def _run(args, argv: list[str], results_path: str) -> dict[str, Any]:
  """Runs the grid (`grid.run_recorded`); returns the final results. Raises grid.GridError."""
  settings_list = [s for s in grid_settings(args.plan, args.mnist) if s.name in args.data]
  describe = lambda key, result: [
      f'{c["data"]} {c["method"]} {c["bits"]} bits seed {c["seed"]}: mAP {c["map"]:.4f} '
      f'({c["seconds"]:.0f} s)' for c in result['cells']]
  os.makedirs(args.out, exist_ok=True)
  return grid.run_recorded(
      PROG, args, argv, results_path, units(settings_list),
      functools.partial(run_unit, {s.name: s for s in settings_list}),
      {'settings': [settings_record(s) for s in settings_list]}, collect, describe)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parse(argv)
  report_path = args.report or os.path.join(os.path.dirname(os.path.abspath(args.out)),
                                            'RESULTS.md')
  results_path = os.path.join(args.out, 'results.json')
  results = grid.results_or_run(PROG, args.render_only, results_path,
                                lambda: _run(args, argv, results_path))
  if isinstance(results, int):
    return results
  report.write(results, hashnet_claims.make_report(results), args.out, report_path)
  print(f'wrote {report_path} and {args.out}/', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
