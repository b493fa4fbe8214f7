"""Updating a trained model with new classes or new samples: the arms of docs/UPDATE.md.

  python -m hashjax.experiments.update --mnist=PATH/mnist_t10k.npz [--bits=16,32,64]
      [--protocols=class,sample] [--seeds=0,1,2] [--workers=2] [--resume] [--quick]

Run from the repository root. Each (protocol, bits, seed) is a unit of `grid.run`: a base run
on the old data (BASE_STEPS steps, fisher.npz at its end), retraining from scratch on all data
(BASE_STEPS steps; the upper bound), and UPDATE_STEPS steps of each update arm from the base:
  finetune     prior none, database re-encoded
  l2           isotropic prior (L2-SP), λ chosen on validation
  laplace      diagonal-Fisher prior (EWC), λ chosen on validation
  laplace_keep laplace + the old database codes kept + code anchor μ = ANCHOR_WEIGHT
and 'no_update' (the base model: old codes kept, new items encoded by it). Protocols
(hashjax.hashing.increments): 'class' — digits 0–6 old, 7–9 new; 'sample' — half of each class's
training (and database) items arrive later. MNIST test set: 100 queries per class, 500
training images per class drawn from the database, mAP@1000, batch 64, small CNN.

λ is chosen before any unit runs, on a validation split (split.validation: the test queries
leave the data, validation queries are drawn from the database) of seed 0 for each protocol
and bits, from LAMBDAS, by the validation all-query mAP with re-encoded codes; test queries are
never seen by the choice. Writes <out>/results.json and docs/UPDATE.md's table file
<out>/update_table.md and plot <out>/update_flips.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any

import numpy as np

from hashjax.experiments import grid
from hashjax.hashing import evaluation, increments, job, run, update
from hashjax.hashing.config import hash_config
from hashjax.hashing.evaluation import upgrade_row
from hashjax.retrieval.metrics import metric_key
from hashjax.runtime import cli
from hashjax.runtime.errors import ConfigError, DataError
from hashjax.runtime.settings import override

PROG = 'python -m hashjax.experiments.update'
BASE_STEPS, UPDATE_STEPS, BATCH = 1000, 250, 64
LAMBDAS = {'l2': (0.01, 0.1, 1.0, 10.0, 100.0), 'laplace': (1e2, 1e3, 1e4, 1e5, 1e6, 1e7)}
ANCHOR_WEIGHT = 1.0
ARMS = ('finetune', 'l2', 'laplace', 'laplace_keep')
PROTOCOLS = {'class': {'split.new_classes': '7,8,9'}, 'sample': {'split.later_fraction': 0.5}}
QUICK = {'base': 60, 'update': 20, 'query_per_class': 10, 'train_per_class': 40}
TOPK = 1000  # mAP@1000, configs/hashnet_mnist.py's map_topk


def _map(suffix: str) -> str:
  """The eval-row key of mAP@TOPK for a database version and query group, e.g.
  'map@1000_kept_all'."""
  return metric_key('map', TOPK, suffix)


def make_config(mnist: str, protocol: str, bits: int, seed: int, stage: str, steps: int,
                quick: bool = False, **overrides):
  """The ConfigDict of one run (configs/hashnet_mnist.py with the protocol's settings)."""
  from configs import hashnet_mnist  # pylint: disable=g-import-not-at-top
  c = hashnet_mnist.get_config()
  c.dataset, c.bits, c.seed, c.batch_size, c.num_steps = f'npz:{mnist}', bits, seed, BATCH, steps
  c.eval_every = c.checkpoint_every = steps
  c.log_every = max(1, steps // 10)
  c.split.stage = stage
  if quick:
    c.split.query_per_class, c.split.train_per_class = (QUICK['query_per_class'],
                                                        QUICK['train_per_class'])
  return override(c, {**PROTOCOLS[protocol], **overrides})


def _train(config, workdir: str) -> tuple[dict[str, Any], float]:
  """(eval.json, wall seconds of the training). A run finished before (a --resume) is only
  evaluated again; its wall time is the one recorded in <workdir>/wall_s.json then."""
  record = os.path.join(workdir, 'wall_s.json')
  finished = os.path.exists(os.path.join(workdir, 'eval.json')) and os.path.exists(record)
  start = time.perf_counter()
  result = run.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - start
  if finished:
    with open(record) as f:
      return result, json.load(f)
  with open(record, 'w') as f:
    json.dump(wall, f)
  return result, wall


def _arm_overrides(arm: str, lambdas: dict[str, float], base_dir: str) -> dict[str, Any]:
  prior = {'finetune': 'none', 'l2': 'l2', 'laplace': 'laplace', 'laplace_keep': 'laplace'}[arm]
  return {'updating.from_workdir': base_dir, 'updating.prior': prior,
          'updating.prior_weight': lambdas.get(prior, 0.0),
          'updating.database_codes': 'keep' if arm == 'laplace_keep' else 'reencode',
          'updating.code_anchor_weight': ANCHOR_WEIGHT if arm == 'laplace_keep' else 0.0}


def _score_state(config, run_dir: str, base_dir: str) -> dict[str, Any]:
  """`evaluation.evaluate_update` of the final state in run_dir, as an update of base_dir."""
  cfg = hash_config(config)
  source, split = job.load_data(cfg)
  _, state, _ = update.load_base(run_dir, source.images(split.train[:1]).shape[1:])
  results, _ = evaluation.evaluate_update(state, cfg, source, split, update.load_indexed_codes(
      base_dir, cfg.bits), increments.parse_classes(cfg.split.new_classes))
  return results


def run_unit(key, *, mnist: str, root: str, lambdas: dict, quick: bool) -> dict[str, Any]:
  """One (protocol, bits, seed): base, retrain, no_update and every arm; returns
  {arm: eval row with wall_s and steps}."""
  protocol, bits, seed = key
  base_steps, update_steps = (QUICK['base'], QUICK['update']) if quick else (BASE_STEPS,
                                                                           UPDATE_STEPS)
  here = os.path.join(root, grid.unit_name(key))
  make = functools.partial(make_config, mnist, protocol, bits, seed, quick=quick)
  base_dir = os.path.join(here, 'base')
  out: dict[str, Any] = {}
  out['base'], wall = _train(make('old', base_steps, save_fisher=True), base_dir)
  out['base'].update(wall_s=wall, steps=base_steps)
  # Scored as updates: no_update keeps the old codes (new items encoded by the base model),
  # retrain re-encodes everything.
  kept = make('new', update_steps, **_arm_overrides('laplace_keep', lambdas, base_dir))
  out['no_update'] = {**_score_state(kept, base_dir, base_dir), 'wall_s': 0.0, 'steps': 0}
  _, wall = _train(make('all', base_steps), os.path.join(here, 'retrain'))
  reencoded = make('new', update_steps, **_arm_overrides('finetune', lambdas, base_dir))
  out['retrain'] = {**_score_state(reencoded, os.path.join(here, 'retrain'), base_dir),
                    'wall_s': wall, 'steps': base_steps}
  for arm in ARMS:
    row, wall = _train(make('new', update_steps, **_arm_overrides(arm, lambdas, base_dir)),
                       os.path.join(here, arm))
    out[arm] = {**row, 'wall_s': wall, 'steps': update_steps}
  return out


def choose_lambdas(mnist: str, protocol: str, bits: int, root: str, quick: bool
                   ) -> dict[str, Any]:
  """λ per prior by validation all-query mAP (re-encoded), seed 0, split.validation=True."""
  base_steps, update_steps = (QUICK['base'], QUICK['update']) if quick else (BASE_STEPS,
                                                                           UPDATE_STEPS)
  here = os.path.join(root, f'select-{protocol}-{bits}')
  make = functools.partial(make_config, mnist, protocol, bits, 0, quick=quick,
                           **{'split.validation': True})
  base_dir = os.path.join(here, 'base')
  _train(make('old', base_steps, save_fisher=True), base_dir)
  chosen, scores = {}, {}
  for prior, grid_values in LAMBDAS.items():
    for lam in grid_values:
      row, _ = _train(make('new', update_steps, **{
          **_arm_overrides(prior, {prior: lam}, base_dir)}), os.path.join(here, f'{prior}-{lam}'))
      scores[f'{prior}={lam:g}'] = row[_map('reencoded_all')]
    chosen[prior] = max(grid_values, key=lambda v, p=prior: scores[f'{p}={v:g}'])
  return {'chosen': chosen, 'validation_map': scores}


# -- summary, acceptance, report ---------------------------------------------------------------
ROWS = ('retrain', 'no_update') + ARMS
FIELDS = tuple(_map(f'{v}_{g}') for v in ('reencoded', 'kept') for g in ('all', 'old', 'new')
               ) + ('flip_rate', 'items_flipped', 'forgetting',
          'database_bits_recomputed', 'steps', 'wall_s')


def summarize(units: dict) -> dict[str, dict[str, dict[str, list[float]]]]:
  """{'protocol-bits': {arm: {field: [mean, std over seeds, n]}}}; forgetting = the base
  model's old-class mAP (no_update, re-encoded) minus the arm's, on the same queries and
  database."""
  groups: dict[str, dict[str, dict[str, list[float]]]] = {}
  for key, result in units.items():
    protocol, bits, _ = key
    old = _map('reencoded_old')
    before = upgrade_row(result['no_update']).get(old)
    for arm in ROWS:
      row = upgrade_row(dict(result[arm]))
      if before is not None and old in row:
        row['forgetting'] = before - row[old]
      cell = groups.setdefault(f'{protocol}-{bits}', {}).setdefault(arm, {})
      for field in FIELDS:
        if row.get(field) is not None:
          cell.setdefault(field, []).append(float(row[field]))
  return {g: {arm: {f: [float(np.mean(v)), float(np.std(v)), len(v)] for f, v in cells.items()}
              for arm, cells in arms.items()} for g, arms in groups.items()}


def acceptance(summary: dict, group: str = 'class-32') -> list[str]:
  """The targets of docs/UPDATE.md on `group`, each a line 'met' / 'NOT met' with its
  figures."""
  s = summary.get(group)
  if not s:
    return [f'{group}: not run']
  m = lambda arm, f: s[arm][f][0]  # noqa: E731
  lines = []
  ft, lp = m('finetune', 'forgetting'), m('laplace', 'forgetting')
  ok = lp <= 0.5 * ft
  lines.append(f'laplace forgetting {lp:.3f} ≤ ½ × finetune {ft:.3f}: '
               f'{"met" if ok else "NOT met"}')
  ft_new, lp_new = (m('finetune', _map('reencoded_new')),
                    m('laplace', _map('reencoded_new')))
  ok = lp_new >= 0.9 * ft_new
  lines.append(f'laplace new-class mAP {lp_new:.3f} ≥ 0.9 × finetune {ft_new:.3f}: '
               f'{"met" if ok else "NOT met"}')
  keep, retrain = m('laplace_keep', _map('kept_all')), m('retrain', _map('reencoded_all'))
  none = m('no_update', _map('kept_all'))
  lines.append(f'keep all-query mAP {keep:.3f} ≥ 0.85 × retrain {retrain:.3f} '
               f'(= {0.85 * retrain:.3f}): {"met" if keep >= 0.85 * retrain else "NOT met"}')
  lines.append(f'keep all-query mAP {keep:.3f} ≥ no update {none:.3f} + 0.10: '
               f'{"met" if keep >= none + 0.10 else "NOT met"}')
  steps = m('laplace_keep', 'steps') / m('retrain', 'steps')
  lines.append(f'keep steps {steps:.0%} of retraining ≤ 25%: '
               f'{"met" if steps <= 0.25 else "NOT met"}')
  return lines


def table(summary: dict) -> str:
  """A markdown table per protocol-bits: mean ± std over seeds."""
  cols = (_map('reencoded_all'), _map('reencoded_old'), _map('reencoded_new'), _map('kept_all'),
          'forgetting', 'flip_rate', 'items_flipped', 'database_bits_recomputed', 'steps',
          'wall_s')
  out = []
  for group, arms in sorted(summary.items()):
    out += [f'### {group} bits', '', '| arm | ' + ' | '.join(cols) + ' |',
            '|' + '---|' * (len(cols) + 1)]
    for arm in ROWS:
      cells = arms.get(arm, {})
      fmt = lambda f: ('—' if f not in cells else  # noqa: E731
                       f'{cells[f][0]:.0f}' if f in ('database_bits_recomputed', 'steps',
                                                      'wall_s') else
                       f'{cells[f][0]:.3f} ± {cells[f][1]:.3f}')
      out.append(f'| {arm} | ' + ' | '.join(fmt(f) for f in cols) + ' |')
    out.append('')
  return '\n'.join(out)


def plot(summary: dict, path: str) -> None:
  """mAP (kept codes, all queries) against the code-flip rate, one point per arm and group."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for group, arms in sorted(summary.items()):
    for arm in ROWS:
      cells = arms.get(arm, {})
      if 'flip_rate' in cells and _map('kept_all') in cells:
        ax.scatter(cells['flip_rate'][0], cells[_map('kept_all')][0], label=f'{group} {arm}')
  ax.set_xlabel('code-flip rate of the indexed items (mean Hamming distance / K)')
  ax.set_ylabel('mAP, all queries, old codes kept')
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r}: comma-separated integers') from None


def _parse(argv: list[str]) -> argparse.Namespace:
  parser = grid.argument_parser(PROG, __doc__.split('\n')[0], 'runs/update_grid')
  parser.add_argument('--mnist', required=True, help='the MNIST test set npz (image, label)')
  parser.add_argument('--bits', type=_ints, default=(16, 32, 64))
  parser.add_argument('--seeds', type=_ints, default=(0, 1, 2))
  parser.add_argument('--protocols', default='class,sample', help='of class, sample')
  parser.add_argument('--out', default='docs/update', help='results.json, table, plot')
  parser.add_argument('--quick', action='store_true',
                      help=f'{QUICK["base"]}+{QUICK["update"]} steps, 10 queries and 40 '
                      'training images per class (a smoke test)')
  args = parser.parse_args(argv)
  grid.check_arguments(parser, args)
  args.protocols = tuple(args.protocols.split(','))
  if not set(args.protocols) <= set(PROTOCOLS):
    parser.error(f'--protocols={",".join(args.protocols)}; accepted: class, sample')
  if not os.path.isfile(args.mnist):
    parser.error(f'--mnist={args.mnist} is not a file; give the MNIST test set npz')
  return args


def main(argv: list[str] | None = None) -> int:
  """The command (module docstring); exit 0, 2 for bad flags or data, 1 for a failed unit."""
  args = _parse(sys.argv[1:] if argv is None else list(argv))
  try:
    return _run(args)
  except (ConfigError, DataError) as e:  # data that cannot be read, before any unit
    return cli.fail(PROG, str(e))


def _run(args: argparse.Namespace) -> int:
  runs = os.path.join(args.workdir, 'runs')
  selection_path = os.path.join(args.workdir, 'selection.json')
  selection = {}
  if args.resume and os.path.exists(selection_path):
    with open(selection_path) as f:
      selection = json.load(f)
  for protocol in args.protocols:
    for bits in args.bits:
      name = f'{protocol}-{bits}'
      if name not in selection:
        selection[name] = choose_lambdas(args.mnist, protocol, bits, runs, args.quick)
        os.makedirs(args.workdir, exist_ok=True)
        with open(selection_path, 'w') as f:
          json.dump(selection, f, indent=1)
      print(f'{name}: λ chosen on validation {selection[name]}', flush=True)
  units = [(p, b, s) for p in args.protocols for b in args.bits for s in args.seeds]
  try:
    done = {}
    for protocol in args.protocols:  # λ differs per (protocol, bits): one grid each
      for bits in args.bits:
        mine = [u for u in units if u[:2] == (protocol, bits)]
        run = functools.partial(run_unit, mnist=os.path.abspath(args.mnist), root=runs,
                                lambdas=selection[f'{protocol}-{bits}']['chosen'],
                                quick=args.quick)
        done.update(grid.run(mine, run, os.path.join(args.workdir, 'units'),
                             workers=args.workers, resume=args.resume,
                             progress=lambda k, r: print(f'{k} done', flush=True)))
  except grid.GridError as e:
    return cli.fail(PROG, str(e), code=1)
  summary = summarize(done)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump({'settings': {'base_steps': BASE_STEPS, 'update_steps': UPDATE_STEPS,
                            'batch': BATCH, 'lambdas': LAMBDAS, 'anchor': ANCHOR_WEIGHT,
                            'quick': args.quick, 'versions': grid.versions()},
               'selection': selection, 'summary': summary,
               'acceptance_class_32': acceptance(summary),
               'units': [{'unit': list(k), 'result': v} for k, v in done.items()]}, f, indent=1)
  with open(os.path.join(args.out, 'update_table.md'), 'w') as f:
    f.write(table(summary) + '\n' + '\n'.join(f'- {x}' for x in acceptance(summary)) + '\n')
  plot(summary, os.path.join(args.out, 'update_flips.png'))
  print(table(summary))
  print('\n'.join(acceptance(summary)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
