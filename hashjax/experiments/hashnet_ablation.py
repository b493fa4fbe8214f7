"""HashNet's claims, checked: ablations, DHN and shallow baselines over code lengths.

  python -m hashjax.experiments.hashnet_ablation --out docs/results --workers=2 [--quick]

Trains on three data sets, at bits ∈ {16, 32, 48, 64} with seeds {0, 1, 2} (the default
`--plan=full`; `--plan=cpu` runs a subset, see `grid_settings`):
  * `digits` — scikit-learn's 8×8 digits (10 classes; sanity check, offline everywhere);
  * `mnist` — the MNIST test set (`npz:../shared/data/mnist_t10k.npz`), 28 px, 10 classes,
    ~10% of pairs similar: 1,000 queries (100/class), 9,000 database, 5,000 training
    (500/class) drawn from the database; mAP@1000;
  * `mnist_pairs100` — two MNIST test digits side by side (56×28 px, label 10·a + b, 100
    classes, ~1% of pairs similar; `pair_digits_source`): 1,000 queries, 9,000 database,
    5,000 training drawn from the database; mAP@1000.
Methods: HashNet (balanced weighting + continuation), HashNet without weighting, HashNet
without continuation (β = 1, sign at test), HashNet ranked by the continuous outputs
tanh(β_T z) (no sign; the upper reference), DHN, and LSH / ITQ on raw pixels.

Writes `<out>/results.json`, `<out>/*.png` and `RESULTS.md` (next to `<out>` by default).
The training loop here is the trainer's public pieces (`create_train_state`,
`make_train_step`, `encode`) plus a held-out pairwise loss every `loss_every` steps, so no
checkpoints are written.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import queue
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hashjax import baselines
from hashjax import codes as codes_lib
from hashjax import data as data_lib
from hashjax import hash_trainer, losses, metrics, parallel
from hashjax.config import HashConfig, hash_config
from hashjax.models import hash_activation

MNIST_NPZ = '../shared/data/mnist_t10k.npz'
BITS = (16, 32, 48, 64)
SEEDS = (0, 1, 2)
# name → overrides of the HashNet settings (see `cell_config`).
METHODS: dict[str, dict[str, Any]] = {
    'hashnet': {},
    'hashnet_no_weighting': {'loss.weighting': 'none'},
    'hashnet_no_continuation': {'beta.schedule': 'constant'},
    'dhn': {'loss.name': 'dhn', 'beta.schedule': 'constant'},
}
CONTINUOUS = 'hashnet_continuous'  # HashNet's own runs, ranked by ⟨tanh(β_T z_q), tanh(β_T z_i)⟩
SHALLOW = ('lsh', 'itq')
LABELS = {
    'hashnet': 'HashNet', 'hashnet_no_weighting': 'HashNet w/o weighting',
    'hashnet_no_continuation': 'HashNet w/o continuation (β=1)',
    CONTINUOUS: 'HashNet, continuous codes (no sign)', 'dhn': 'DHN', 'lsh': 'LSH',
    'itq': 'ITQ',
}
LOSS_CURVE_BITS = 48
HELDOUT = 256  # images of the fixed held-out batch for the loss curves


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """One data set of the grid and its training settings (experiment-only, not defaults)."""
  name: str
  spec: str  # 'digits', 'npz:PATH' or 'pairs:PATH' (built by `pair_digits_source`)
  query_per_class: int | None
  num_query: int | None
  train_per_class: int | None
  num_train: int | None
  map_topk: int | None
  num_steps: int
  methods: tuple[str, ...] = tuple(METHODS)
  bits: tuple[int, ...] = BITS
  seeds: tuple[int, ...] = SEEDS  # at every code length
  extra_seeds: tuple[int, ...] = ()  # at LOSS_CURVE_BITS only, for extra_seed_methods
  extra_seed_methods: tuple[str, ...] = ('hashnet', 'hashnet_no_weighting', 'dhn')
  batch_size: int = 64
  learning_rate: float = 1e-3
  loss_every: int = 25

  def cells(self) -> list[tuple[int, int]]:
    """(seed, bits) pairs to run, seed-major (the split depends on the seed)."""
    out = []
    for seed in sorted(set(self.seeds) | set(self.extra_seeds)):
      out += [(seed, b) for b in self.bits if seed in self.seeds or b == LOSS_CURVE_BITS]
    return out

  def beta(self) -> dict[str, Any]:
    """β from 1 to ≈ 5 over the run, updated 10 times (HashNet reaches ≈ 7 in 10,000 steps)."""
    return {'beta0': 1.0, 'gamma': 24.0 / self.num_steps, 'power': 0.5,
            'step_size': max(1, self.num_steps // 10)}


PLANS = ('full', 'cpu', 'quick')


def grid_settings(plan: str = 'full', mnist_path: str = MNIST_NPZ) -> list[DataSettings]:
  """The three data sets and what runs on each.

  plan: 'full' — every method × {16, 32, 48, 64} bits × 3 seeds on all three sets; 'cpu' —
    a third of the deep runs (about 45 min on 2 CPU cores): digits and MNIST at every
    code length with seed 0, and seeds 1 and 2 for HashNet (and LSH/ITQ) at 48 bits on
    MNIST; the 100-class set at 48 bits, seed 0, without the no-continuation ablation;
    'quick' — a smoke test (16 and 48 bits, seed 0, 10% of the steps; numbers mean little).
  """
  if plan not in PLANS:
    raise ValueError(f'unknown plan {plan!r}; accepted: {", ".join(PLANS)}')
  mnist, pairs = f'npz:{mnist_path}', f'pairs:{mnist_path}'
  full = [
      DataSettings('digits', 'digits', 30, None, 100, None, None, 300),
      DataSettings('mnist', mnist, 100, None, 500, None, 1000, 300),
      DataSettings('mnist_pairs100', pairs, None, 1000, None, 5000, 1000, 200),
  ]
  if plan == 'full':
    return full
  if plan == 'quick':
    return [dataclasses.replace(s, num_steps=max(20, s.num_steps // 10), bits=(16, 48),
                                seeds=(0,)) for s in full]
  digits, mnist_set, pairs_set = full
  return [dataclasses.replace(digits, seeds=(0,)),
          dataclasses.replace(mnist_set, seeds=(0,), extra_seeds=(1, 2),
                              extra_seed_methods=('hashnet',)),
          dataclasses.replace(pairs_set, seeds=(0,), bits=(LOSS_CURVE_BITS,),
                              methods=('hashnet', 'hashnet_no_weighting', 'dhn'))]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def pair_digits_source(base: data_lib.Source, num_items: int = 10_000, seed: int = 0
                       ) -> data_lib.ArraySource:
  """An imbalanced-pairs, 100-class set: two digits of `base` side by side.

  Item n is base image a_n on the left and b_n on the right (two independent permutations of
  the base, cycled), label 10·y(a_n) + y(b_n). With ~10 balanced digit classes the 100
  classes hold ~1% each, so ~1% of pairs are similar (vs ~10% for the digits alone).

  Args:
    base: single-label source of equal-size images [N, H, W, C] with class ids 0..9.
    num_items: items to build. seed: the pairing (deterministic).

  Returns:
    ArraySource with uint8 images [num_items, H, 2W, C] and int64 labels [num_items].
  """
  n = len(base)
  rng = np.random.default_rng([seed, 0x9A1E])
  left = np.concatenate([rng.permutation(n) for _ in range(-(-num_items // n))])[:num_items]
  right = np.concatenate([rng.permutation(n) for _ in range(-(-num_items // n))])[:num_items]
  images = np.concatenate([base.images(left), base.images(right)], axis=2)
  labels = 10 * base.labels[left] + base.labels[right]
  return data_lib.ArraySource(images, labels.astype(np.int64))


def load_data(settings: DataSettings, seed: int
              ) -> tuple[data_lib.Source, data_lib.Split, np.ndarray]:
  """Source, protocol split (seed-dependent) and the fixed held-out indices (database items
  outside the training set) for the loss curves."""
  if settings.spec.startswith('pairs:'):
    source = pair_digits_source(data_lib.load_source('npz:' + settings.spec[len('pairs:'):]))
  else:
    source = data_lib.load_source(settings.spec)
  split = data_lib.protocol_split(
      source.labels, seed=seed, query_per_class=settings.query_per_class,
      num_query=settings.num_query, train_per_class=settings.train_per_class,
      num_train=settings.num_train)
  rest = np.setdiff1d(split.database, split.train)
  heldout = np.random.default_rng([seed, 0x4E1D]).choice(rest, min(HELDOUT, len(rest)),
                                                         replace=False)
  return source, split, np.sort(heldout)


# ---------------------------------------------------------------------------------------------
# Configs and training
# ---------------------------------------------------------------------------------------------


def cell_config(settings: DataSettings, method: str, bits: int, seed: int) -> HashConfig:
  """The HashConfig of one grid cell: small_cnn, Adam, the data set's settings, the method's
  overrides (METHODS)."""
  values: dict[str, Any] = {
      'dataset': settings.spec, 'image_size': None, 'class_list': None,
      'backbone': 'small_cnn', 'bits': bits, 'batch_size': settings.batch_size,
      'num_steps': settings.num_steps, 'learning_rate': settings.learning_rate,
      'optimizer': 'adam', 'momentum': 0.9, 'weight_decay': 1e-4, 'hash_lr_mult': 10.0,
      'lr_decay_every': max(1, settings.num_steps // 2), 'lr_decay_factor': 0.5, 'seed': seed,
      'log_every': settings.num_steps, 'eval_every': settings.num_steps,
      'checkpoint_every': settings.num_steps, 'map_topk': settings.map_topk,
      'eval_batch_size': 1000, 'compute_dtype': 'float32',
      'beta': {'schedule': 'hashnet', **settings.beta()},
      'loss': {'name': 'hashnet', 'weighting': 'balanced', 'alpha': None, 'class_num': None,
               'quantization_weight': 0.1},
      'split': {'query_per_class': settings.query_per_class, 'num_query': settings.num_query,
                'train_per_class': settings.train_per_class, 'num_train': settings.num_train,
                'train_in_database': True},
      'checkpoint': {'max_to_keep': 1, 'max_bytes': None, 'best_metric': None,
                     'async_save': False},
  }
  for key, value in METHODS[method].items():
    group, name = key.split('.')
    values[group] = {**values[group], name: value}
  return hash_config(values)


def heldout_losses(z_NxK: jax.Array, labels: jax.Array, beta, alpha: float
                   ) -> tuple[jax.Array, jax.Array]:
  """Unweighted pairwise NLL (nats per pair, all ordered pairs i ≠ j) of a held-out batch with
  the continuous codes tanh(β z) and with the binary codes sign(z)."""
  relaxed = losses.hashnet_loss(hash_activation(z_NxK, beta), labels, alpha=alpha,
                                weighting='none')
  binary = losses.hashnet_loss(codes_lib.sign_codes(z_NxK).astype(jnp.float32), labels,
                               alpha=alpha, weighting='none')
  return relaxed, binary


def train_cell(cfg: HashConfig, source: data_lib.Source, split: data_lib.Split,
               heldout: np.ndarray | None = None, loss_every: int = 25
               ) -> tuple[hash_trainer.TrainState, list[dict[str, float]]]:
  """Trains one cell; every `loss_every` steps (and at the end) records the held-out pairwise
  losses with tanh(βz) and sign(z) when `heldout` indices are given.

  Returns:
    (final state, curve rows {'step', 'beta', 'loss_tanh', 'loss_sign'}).
  """
  mesh = parallel.make_mesh()
  init_rng, step_rng = np.asarray(jax.random.split(jax.random.PRNGKey(cfg.seed)))
  state = hash_trainer.create_train_state(cfg, source.images(split.train[:1]).shape[1:],
                                          init_rng, mesh)
  step_rng = parallel.replicate(step_rng, mesh)
  step_fn = hash_trainer.make_train_step(cfg, mesh)
  beta_fn = hash_trainer.make_beta_fn(cfg)
  curve = []

  def record(step):
    z = hash_trainer.encode(state, source, heldout, len(heldout), mesh)
    beta = float(beta_fn(max(step - 1, 0)))  # β of the last step taken
    relaxed, binary = heldout_losses(jnp.asarray(z), source.labels[heldout], beta, cfg.alpha)
    curve.append({'step': step, 'beta': beta, 'loss_tanh': float(relaxed),
                  'loss_sign': float(binary)})

  for step in range(cfg.num_steps):
    if heldout is not None and step % loss_every == 0:
      record(step)
    positions = data_lib.batch_indices(len(split.train), cfg.batch_size, step, cfg.seed)
    idx = split.train[positions]
    batch = parallel.global_batch(
        {'image': data_lib.to_float(source.images(idx)), 'label': source.labels[idx]}, mesh)
    state, _ = step_fn(state, batch, step_rng)
  if heldout is not None:
    record(cfg.num_steps)
  return state, curve


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def continuous_map(query_h_QxK, db_h_NxK, query_labels, db_labels, topk: int | None) -> float:
  """mAP@topk ranking the database by −⟨h_q, h_i⟩ of continuous codes (ties by index).

  Same AP convention as `hashjax.metrics` (AP@K = Σ_{k≤K} P@k·rel_k / R_K; R_K = 0 → AP 0).
  """
  q = np.asarray(query_h_QxK, np.float32)
  db = np.asarray(db_h_NxK, np.float32)
  k = len(db) if topk is None else min(topk, len(db))
  aps = []
  for start in range(0, len(q), 256):
    score_CxN = -(q[start:start + 256] @ db.T)
    order_CxK = np.argsort(score_CxN, axis=1, kind='stable')[:, :k]
    rel_CxK = _relevant(query_labels[start:start + 256], db_labels, order_CxK)
    hits_CxK = np.cumsum(rel_CxK, axis=1)
    precision_CxK = hits_CxK / np.arange(1, k + 1)
    num_rel_C = hits_CxK[:, -1]
    aps.append(np.where(num_rel_C > 0, (precision_CxK * rel_CxK).sum(1)
                        / np.maximum(num_rel_C, 1), 0.0))
  return float(np.concatenate(aps).mean())


def _relevant(query_labels, db_labels, order_CxK) -> np.ndarray:
  ranked = np.asarray(db_labels)[order_CxK]
  if ranked.ndim == 2:
    return (np.asarray(query_labels)[:, None] == ranked).astype(np.float64)
  return ((np.asarray(query_labels)[:, None, :] * ranked).sum(-1) > 0).astype(np.float64)


def score_codes(query_codes, db_codes, query_labels, db_labels, topk, bits: int
                ) -> dict[str, Any]:
  """mAP@topk (ties by index), its tie interval, precision within radius 2, PR curve."""
  report = metrics.retrieval_report(query_codes, db_codes, query_labels, db_labels,
                                    topks=(topk,), ties=('index', 'worst', 'best'),
                                    pr_curve=True)
  name = 'all' if topk is None else topk
  return {'map': report[f'map@{name}'],
          'map_interval': [report[f'map@{name}_worst'], report[f'map@{name}_best']],
          'precision_at_radius_2': report['pr_precision'][min(2, bits)],
          'pr_precision': report['pr_precision'], 'pr_recall': report['pr_recall']}


def evaluate_cell(state, cfg: HashConfig, source, split, continuous: bool
                  ) -> dict[str, dict[str, Any]]:
  """{method: scores}: sign codes, plus the continuous-code ranking when asked."""
  mesh = parallel.make_mesh()
  z_q = hash_trainer.encode(state, source, split.query, cfg.eval_batch_size, mesh)
  z_db = hash_trainer.encode(state, source, split.database, cfg.eval_batch_size, mesh)
  q_labels, db_labels = source.labels[split.query], source.labels[split.database]
  out = {'sign': score_codes(np.asarray(codes_lib.sign_codes(z_q)),
                             np.asarray(codes_lib.sign_codes(z_db)), q_labels, db_labels,
                             cfg.map_topk, cfg.bits)}
  if continuous:
    beta = float(hash_trainer.make_beta_fn(cfg)(cfg.num_steps - 1))
    out['continuous'] = {'map': continuous_map(np.tanh(beta * z_q), np.tanh(beta * z_db),
                                               q_labels, db_labels, cfg.map_topk)}
  return out


def shallow_cell(method: str, source, split, bits: int, seed: int, topk) -> dict[str, Any]:
  """LSH or ITQ fitted on the training images' raw pixels (in [−1, 1], flattened)."""
  flat = lambda idx: data_lib.to_float(source.images(idx)).reshape(len(idx), -1)
  x_train, x_q, x_db = flat(split.train), flat(split.query), flat(split.database)
  if method == 'lsh':
    model = baselines.lsh_fit(x_train.shape[1], bits, seed=seed, mean_D=x_train.mean(0))
    encode = lambda x: baselines.lsh_encode(model, x)
  else:
    model = baselines.itq_fit(x_train, bits, seed=seed)
    encode = lambda x: baselines.itq_encode(model, x)
  return score_codes(encode(x_q), encode(x_db), source.labels[split.query],
                     source.labels[split.database], topk, bits)


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------


def grid_tasks(settings_list: list[DataSettings]
               ) -> list[tuple[DataSettings, int, int, tuple[str, ...]]]:
  """The grid's work units (settings, seed, bits, methods incl. LSH/ITQ), in a fixed order."""
  tasks = []
  for settings in settings_list:
    for seed, bits in settings.cells():
      methods = settings.methods if seed in settings.seeds else [
          m for m in settings.methods if m in settings.extra_seed_methods]
      tasks.append((settings, seed, bits, SHALLOW + tuple(methods)))
  return tasks


def run_task(settings: DataSettings, seed: int, bits: int, todo: tuple[str, ...]
             ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, float]]]]:
  """Runs the `todo` methods of one (data, seed, bits) unit.

  Returns:
    (cells, curves {method: rows} for the units that record the loss curve).
  """
  source, split, heldout = load_data(settings, seed)
  cells, curves = [], {}
  for method in [m for m in SHALLOW if m in todo]:
    t0 = time.perf_counter()
    scores = shallow_cell(method, source, split, bits, seed, settings.map_topk)
    cells.append({'data': settings.name, 'method': method, 'bits': bits, 'seed': seed,
                  'seconds': time.perf_counter() - t0, **scores})
  for method in [m for m in todo if m not in SHALLOW]:
    t0 = time.perf_counter()
    cfg = cell_config(settings, method, bits, seed)
    want_curve = bits == LOSS_CURVE_BITS and seed == min(settings.seeds)
    state, curve = train_cell(cfg, source, split, heldout if want_curve else None,
                              settings.loss_every)
    scores = evaluate_cell(state, cfg, source, split, continuous=method == 'hashnet')
    cells.append({'data': settings.name, 'method': method, 'bits': bits, 'seed': seed,
                  'seconds': time.perf_counter() - t0, **scores['sign']})
    if 'continuous' in scores:
      cells.append({'data': settings.name, 'method': CONTINUOUS, 'bits': bits, 'seed': seed,
                    'seconds': 0.0, **scores['continuous']})
    if want_curve:
      curves[method] = curve
  return cells, curves


def _worker(core: int | None, tasks, results) -> None:
  """Worker process of `run_grid(workers > 1)`: pinned to one core, runs tasks until None."""
  if core is not None and hasattr(os, 'sched_setaffinity'):
    os.sched_setaffinity(0, {core})
  while (task := tasks.get()) is not None:
    index, unit = task
    try:
      results.put((index, *run_task(*unit), None))
    except Exception as e:  # pylint: disable=broad-except  # reported by the parent
      results.put((index, [], {}, f'{type(e).__name__}: {e}'))


def run_grid(settings_list: list[DataSettings], progress: Callable[[str], None] = lambda _: None,
             save: Callable[[dict[str, Any]], None] = lambda _: None,
             previous: dict[str, Any] | None = None, workers: int = 1) -> dict[str, Any]:
  """Every cell of every data set (`DataSettings.cells` × methods, plus LSH and ITQ).

  Cells and curves already in `previous` (an earlier, interrupted grid) are kept, not rerun.
  `workers` > 1 runs (data, seed, bits) units in that many processes, each pinned to one core
  with single-threaded XLA: on 2 cores two such workers finish the MNIST cells ~1.45× sooner
  than one process using both cores (batch-64 steps do not keep two threads busy). The numbers
  are the same up to float summation order.

  Returns:
    {'cells': [{'data', 'method', 'bits', 'seed', 'map', 'map_interval',
    'precision_at_radius_2', 'pr_precision', 'pr_recall', 'seconds'}...] in grid order,
    'curves': {data: {method: rows}} (48 bits, first seed), 'settings': [...]}.
    `save` gets the partial result after every unit.
  """
  if workers < 1:
    raise ValueError(f'workers={workers}; accepted: an integer >= 1')
  grid = {'cells': [], 'curves': {}, 'settings': [dataclasses.asdict(s) for s in settings_list]}
  if previous:
    grid['cells'] += previous['cells']
    grid['curves'].update(previous['curves'])
  done = {(c['data'], c['method'], c['bits'], c['seed']) for c in grid['cells']}
  units = grid_tasks(settings_list)
  order = {(s.name, m, b, seed): i for i, (s, seed, b, _) in enumerate(units)
           for m in SHALLOW + tuple(METHODS) + (CONTINUOUS,)}
  tasks = [(s, seed, b, todo) for s, seed, b, methods in units
           if (todo := tuple(m for m in methods if (s.name, m, b, seed) not in done))]

  def finish(unit, cells, curves):
    settings, seed, bits, _ = unit
    grid['cells'] = sorted(
        grid['cells'] + cells,
        key=lambda c: order.get((c['data'], c['method'], c['bits'], c['seed']), -1))
    for method, curve in curves.items():
      grid['curves'].setdefault(settings.name, {})[method] = curve
    for c in cells:
      if c['method'] not in SHALLOW and c['method'] != CONTINUOUS:
        progress(f'{settings.name} {c["method"]} {bits} bits seed {seed}: '
                 f'mAP {c["map"]:.4f} ({c["seconds"]:.0f} s)')
    save(grid)

  if workers == 1 or len(tasks) <= 1:
    for unit in tasks:
      finish(unit, *run_task(*unit))
    return grid
  import multiprocessing  # pylint: disable=g-import-not-at-top
  ctx = multiprocessing.get_context('spawn')
  task_q, result_q = ctx.Queue(), ctx.Queue()
  for index, unit in enumerate(tasks):
    task_q.put((index, unit))
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []
  single_thread = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'
  old_flags = os.environ.get('XLA_FLAGS')
  os.environ['XLA_FLAGS'] = f'{old_flags or ""} {single_thread}'.strip()  # read by the children
  try:
    procs = []
    for w in range(workers):
      task_q.put(None)
      core = cores[w % len(cores)] if len(cores) >= workers else None
      procs.append(ctx.Process(target=_worker, args=(core, task_q, result_q), daemon=True))
      procs[-1].start()
  finally:
    if old_flags is None:
      os.environ.pop('XLA_FLAGS')
    else:
      os.environ['XLA_FLAGS'] = old_flags
  try:
    for _ in tasks:
      while True:
        try:
          index, cells, curves, error = result_q.get(timeout=10)
          break
        except queue.Empty:
          if not any(p.is_alive() for p in procs):  # killed (e.g. out of memory)
            raise RuntimeError(f'the {workers} worker processes exited with units left; '
                               'the cells so far are saved: rerun with --resume') from None
      if error is not None:
        settings, seed, bits, _ = tasks[index]
        raise RuntimeError(f'{settings.name} {bits} bits seed {seed} failed: {error}')
      finish(tasks[index], cells, curves)
  finally:
    for p in procs:
      if p.is_alive():
        p.terminate()
      p.join()
  return grid


def summarize(cells: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, float]]:
  """(data, method, bits) → mean/std over seeds of map, tie-interval ends, P@r≤2."""
  groups: dict[tuple[str, str, int], list] = {}
  for c in cells:
    groups.setdefault((c['data'], c['method'], c['bits']), []).append(c)
  out = {}
  for key, rows in groups.items():
    maps = np.array([r['map'] for r in rows])
    entry = {'map_mean': float(maps.mean()), 'map_std': float(maps.std()), 'n': len(rows)}
    if 'map_interval' in rows[0]:
      entry['worst'] = float(np.mean([r['map_interval'][0] for r in rows]))
      entry['best'] = float(np.mean([r['map_interval'][1] for r in rows]))
      entry['p_r2'] = float(np.mean([r['precision_at_radius_2'] for r in rows]))
    out[key] = entry
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m hashjax.experiments.hashnet_ablation',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='docs/results', help='folder for results.json and PNGs')
  parser.add_argument('--report', default=None,
                      help='RESULTS.md path (default: <out>/../RESULTS.md)')
  parser.add_argument('--plan', default='full', choices=PLANS, help='see grid_settings')
  parser.add_argument('--quick', action='store_true', help='same as --plan=quick')
  parser.add_argument('--mnist', default=MNIST_NPZ, help='npz of the MNIST test set')
  parser.add_argument('--data', default=None,
                      help='comma-separated subset of digits,mnist,mnist_pairs100')
  parser.add_argument('--resume', action='store_true',
                      help='keep the cells already in <out>/results.json and run the rest')
  parser.add_argument('--workers', type=int, default=1,
                      help='processes, each on one core with single-threaded XLA (2 is ~1.45x '
                           'faster than 1 on 2 cores)')
  parser.add_argument('--render_only', action='store_true',
                      help='rewrite RESULTS.md and the PNGs from <out>/results.json')
  args = parser.parse_args(argv)
  if args.workers < 1:
    parser.error(f'--workers={args.workers}; accepted: an integer >= 1')
  report_path = args.report or os.path.join(os.path.dirname(os.path.abspath(args.out)),
                                            'RESULTS.md')
  results_path = os.path.join(args.out, 'results.json')
  if args.render_only:
    with open(results_path) as f:
      write_report(json.load(f), args.out, report_path)
    return 0
  settings_list = grid_settings('quick' if args.quick else args.plan, args.mnist)
  if args.data:
    wanted = args.data.split(',')
    settings_list = [s for s in settings_list if s.name in wanted]
  os.makedirs(args.out, exist_ok=True)
  previous = None
  if args.resume and os.path.exists(results_path):
    with open(results_path) as f:
      previous = json.load(f)
  earlier = (previous or {}).get('wall_seconds', 0.0)
  start = time.time()
  date = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
  meta = {'command': 'python -m hashjax.experiments.hashnet_ablation ' + ' '.join(
              sys.argv[1:] if argv is None else argv),
          'date': date, 'versions': versions(), 'plan': 'quick' if args.quick else args.plan}
  # One row per invocation that added cells (a resumed grid spans several).
  sessions = list((previous or {}).get('sessions') or (
      [{'date': previous.get('date'), 'workers': 1, 'wall_seconds': earlier,
        'cells': len(previous['cells'])}] if previous else []))

  def save(grid):
    wall = time.time() - start
    this = {'date': date, 'workers': args.workers, 'wall_seconds': wall,
            'cells': len(grid['cells']) - sum(r['cells'] for r in sessions)}
    with open(results_path + '.tmp', 'w') as f:
      json.dump({**grid, **meta, 'wall_seconds': earlier + wall, 'sessions': sessions + [this]},
                f)
    os.replace(results_path + '.tmp', results_path)

  say = lambda line: print(f'[{time.time() - start:7.0f} s] {line}', flush=True)
  grid = run_grid(settings_list, progress=say, save=save, previous=previous,
                  workers=args.workers)
  save(grid)
  with open(results_path) as f:
    write_report(json.load(f), args.out, report_path)
  say(f'wrote {report_path} and {args.out}/')
  return 0


def versions() -> dict[str, str]:
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  out = {'python': platform.python_version()}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'scikit-learn', 'matplotlib'):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      out[name] = 'absent'
  out['devices'] = f'{jax.device_count()} × {jax.devices()[0].platform}'
  out['cpu_count'] = str(os.cpu_count())
  return out


def _fmt(entry: dict[str, float] | None, key: str = 'map') -> str:
  if entry is None:
    return '–'
  if key == 'map':
    std = f' ± {entry["map_std"]:.3f}' if entry['n'] > 1 else ''
    return f'{entry["map_mean"]:.3f}{std}' + (f' (n={entry["n"]})' if entry['n'] > 1 else '')
  if key == 'interval':
    return f'[{entry["worst"]:.3f}, {entry["best"]:.3f}]' if 'worst' in entry else '–'
  return f'{entry["p_r2"]:.3f}' if 'p_r2' in entry else '–'


def _method_order(summary, data) -> list[str]:
  present = {m for d, m, _ in summary if d == data}
  order = list(METHODS) + [CONTINUOUS] + list(SHALLOW)
  return [m for m in order if m in present]


def _bits_of(summary, data) -> list[int]:
  return sorted({b for d, _, b in summary if d == data})


def _plot_map_vs_bits(summary, datasets, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
  for ax, data in zip(axes[0], datasets):
    for method in _method_order(summary, data):
      bits = [b for b in _bits_of(summary, data) if (data, method, b) in summary]
      mean = [summary[(data, method, b)]['map_mean'] for b in bits]
      std = [summary[(data, method, b)]['map_std'] for b in bits]
      style = '--' if method == CONTINUOUS else '-'
      ax.errorbar(bits, mean, yerr=std, marker='o', linestyle=style, capsize=3,
                  label=LABELS[method])
    ax.set(title=data, xlabel='bits', ylabel='mAP (ties by index)', ylim=(0, 1.02))
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_pr(cells, datasets, bits, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
  for ax, data in zip(axes[0], datasets):
    rows = [c for c in cells if c['data'] == data and c['bits'] == bits and 'pr_recall' in c]
    for method in [m for m in list(METHODS) + list(SHALLOW) if any(r['method'] == m for r in rows)]:
      mine = [r for r in rows if r['method'] == method]
      recall = np.mean([r['pr_recall'] for r in mine], axis=0)
      precision = np.mean([r['pr_precision'] for r in mine], axis=0)
      ax.plot(recall, precision, marker='.', label=LABELS[method])
    ax.set(title=f'{data}, {bits} bits (Hamming radius 0..{bits})', xlabel='recall',
           ylabel='precision', xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_curves(curves, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  datasets = [d for d in ('mnist', 'mnist_pairs100') if d in curves] or sorted(curves)
  fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
  for ax, data in zip(axes[0], datasets):
    for i, (method, rows) in enumerate(curves[data].items()):
      if method == 'hashnet_no_weighting':
        continue
      steps = [r['step'] for r in rows]
      color = f'C{i}'
      ax.plot(steps, [r['loss_tanh'] for r in rows], color=color, label=f'{LABELS[method]}: tanh(βz)')
      ax.plot(steps, [r['loss_sign'] for r in rows], color=color, linestyle='--',
              label=f'{LABELS[method]}: sign(z)')
    ax.set(title=f'{data}, {LOSS_CURVE_BITS} bits: held-out pairwise NLL', xlabel='step',
           ylabel='nats per pair (unweighted)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _sessions_text(grid) -> str:
  sessions = grid.get('sessions') or []
  if len(sessions) < 2:
    return ''
  parts = [f'{r["date"]}: {r["wall_seconds"] / 60:.1f} min, {r["cells"]} cells, '
           f'{r["workers"]} worker{"s" if r["workers"] > 1 else ""}' for r in sessions]
  return f', in {len(sessions)} resumed runs ({"; ".join(parts)})'


def _mean(summary, key):
  entry = summary.get(key)
  return None if entry is None else entry['map_mean']


def check_claims(summary, curves) -> list[dict[str, Any]]:
  """The three claims, each {'claim', 'held', 'evidence'} from the summarised grid."""
  out = []
  sets = [d for d in ('mnist', 'mnist_pairs100') if any(k[0] == d for k in summary)]
  lines, held = [], True
  for data in sets:
    for bits in _bits_of(summary, data):
      ours = _mean(summary, (data, 'hashnet', bits))
      others = {m: _mean(summary, (data, m, bits)) for m in ('dhn', 'lsh', 'itq')}
      others = {m: v for m, v in others.items() if v is not None}
      if ours is None or not others:
        continue
      best = max(others, key=others.get)
      ok = ours > others[best]
      held &= ok
      lines.append(f'{data} {bits} bits: HashNet {ours:.3f} vs best other ({LABELS[best]}) '
                   f'{others[best]:.3f} → {"yes" if ok else "NO"}')
  out.append({'claim': '1. HashNet beats DHN, ITQ and LSH at every code length',
              'held': held and bool(lines), 'evidence': lines})

  lines, drops = [], {}
  for data in sets:
    ours = _mean(summary, (data, 'hashnet', LOSS_CURVE_BITS))
    plain = _mean(summary, (data, 'hashnet_no_weighting', LOSS_CURVE_BITS))
    if ours is None or plain is None:
      continue
    drops[data] = ours - plain
    lines.append(f'{data} {LOSS_CURVE_BITS} bits: HashNet {ours:.3f}, without weighting '
                 f'{plain:.3f}: drop {ours - plain:+.3f} ({(ours - plain) / ours:.0%} of HashNet)')
  ok = len(drops) == 2 and drops['mnist_pairs100'] > drops['mnist']
  out.append({'claim': '2. Weighting matters most when similar pairs are rare (drop from '
                       'removing it larger on the 100-class set, ~1% similar, than on MNIST, '
                       '~10%)', 'held': ok, 'evidence': lines})

  lines, gaps = [], {}
  for method in ('hashnet', 'hashnet_no_continuation', 'dhn'):
    rows = curves.get('mnist', {}).get(method)
    if not rows:
      continue
    last = rows[-1]
    gaps[method] = last['loss_sign'] - last['loss_tanh']
    lines.append(f'{LABELS[method]} at step {last["step"]} (β = {last["beta"]:.2f}): '
                 f'tanh(βz) {last["loss_tanh"]:.4f}, sign(z) {last["loss_sign"]:.4f} nats/pair, '
                 f'gap {gaps[method]:+.4f}')
  others = [g for m, g in gaps.items() if m != 'hashnet']
  if 'hashnet' in gaps and others and gaps['hashnet'] > 0:
    lines.append('gap relative to HashNet\'s: ' + ', '.join(
        f'{LABELS[m]} ×{g / gaps["hashnet"]:.1f}' for m, g in gaps.items() if m != 'hashnet'))
  ok = 'hashnet' in gaps and bool(others) and all(
      abs(gaps['hashnet']) < 0.5 * g for g in others)
  out.append({'claim': '3. Continuation: the sign(z) loss stays close to the tanh(βz) loss for '
                       'HashNet (gap < half of the others\') but jumps for DHN and without '
                       'continuation (MNIST, 48 bits, held-out pairs, final step)',
              'held': ok, 'evidence': lines})
  return out


def _settings_from_dict(values: dict[str, Any]) -> DataSettings:
  return DataSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _similar_fraction(settings: dict[str, Any]) -> float | None:
  """Fraction of similar ordered pairs i ≠ j in the seed-0 training set (None: no data)."""
  try:
    source, split, _ = load_data(_settings_from_dict(settings), 0)
  except (data_lib.DataError, OSError):
    return None
  labels = source.labels[split.train]
  counts = np.bincount(labels)
  n = len(labels)
  return float(((counts * (counts - 1)).sum()) / (n * (n - 1)))


def write_report(grid: dict[str, Any], out_dir: str, report_path: str) -> None:
  """RESULTS.md (tables, settings, claims) and three PNGs in `out_dir` from a results.json
  dict."""
  summary = summarize(grid['cells'])
  datasets = [s['name'] for s in grid['settings'] if any(k[0] == s['name'] for k in summary)]
  os.makedirs(out_dir, exist_ok=True)
  rel = os.path.relpath(out_dir, os.path.dirname(os.path.abspath(report_path)))
  _plot_map_vs_bits(summary, datasets, os.path.join(out_dir, 'map_vs_bits.png'))
  _plot_pr(grid['cells'], datasets, LOSS_CURVE_BITS, os.path.join(out_dir, 'pr_48bits.png'))
  if grid['curves']:
    _plot_curves(grid['curves'], os.path.join(out_dir, 'quantization_loss.png'))
  claims = check_claims(summary, grid['curves'])
  v = grid.get('versions', {})
  lines = [
      '# HashNet claims, reproduced on CPU-sized data',
      '',
      'Generated by `hashjax/experiments/hashnet_ablation.py`; do not edit by hand. Command:',
      '',
      '```bash',
      grid.get('command', ''),
      '```',
      '',
      f'Date: {grid.get("date")}. Wall time of the grid: {grid.get("wall_seconds", 0) / 60:.1f} '
      f'min on {v.get("devices")} ({v.get("cpu_count")} CPU cores){_sessions_text(grid)}. '
      f'Plan: `{grid.get("plan")}`. Versions: ' + ', '.join(
          f'{k} {val}' for k, val in v.items() if k not in ('devices', 'cpu_count')) + '.',
      '',
      '## The claims',
      '',
  ]
  for c in claims:
    verdict = ('not tested (cells missing)' if not c['evidence'] else
               'held' if c['held'] else 'did not hold')
    lines.append(f'- **{c["claim"]}: {verdict}.**')
    lines += [f'  - {e}' for e in c['evidence']]
  lines += ['', '## mAP@K (mean ± std over seeds; ties by database index)', '']
  for data in datasets:
    bits = _bits_of(summary, data)
    topk = next(s['map_topk'] for s in grid['settings'] if s['name'] == data)
    lines += [f'### {data} (mAP@{topk or "all"})', '',
              '| method | ' + ' | '.join(f'{b} bits' for b in bits) + ' |',
              '| --- |' + ' --- |' * len(bits)]
    for m in _method_order(summary, data):
      lines.append(f'| {LABELS[m]} | ' + ' | '.join(
          _fmt(summary.get((data, m, b))) for b in bits) + ' |')
    lines += ['', 'Tie interval [worst, best] over the orders of tied items (seed mean) and '
              'precision within Hamming radius 2 (empty ball = 0):', '',
              '| method | ' + ' | '.join(f'{b} bits: interval / P@r≤2' for b in bits) + ' |',
              '| --- |' + ' --- |' * len(bits)]
    for m in _method_order(summary, data):
      if m == CONTINUOUS:
        continue
      lines.append(f'| {LABELS[m]} | ' + ' | '.join(
          f'{_fmt(summary.get((data, m, b)), "interval")} / {_fmt(summary.get((data, m, b)), "p")}'
          for b in bits) + ' |')
    lines.append('')
  lines += ['## Figures', '',
            f'![mAP vs bits]({rel}/map_vs_bits.png)', '',
            f'![precision-recall at 48 bits]({rel}/pr_48bits.png)', '']
  if grid['curves']:
    lines += [f'![quantization loss]({rel}/quantization_loss.png)', '',
              'Held-out pairwise NLL (unweighted, α = 10/bits, all ordered pairs of a fixed '
              f'batch of {HELDOUT} database images outside the training set) with the '
              'continuous codes tanh(βz) (solid) and the binary codes sign(z) (dashed).', '']
  lines += ['## Settings', '',
            '| data | spec | protocol | steps | batch | lr | β schedule | similar pairs (train) '
            '| seeds / extra seeds @48 | bits |', '| --- |' + ' --- |' * 9]
  for s in grid['settings']:
    if s['name'] not in datasets:
      continue
    q = f'{s["query_per_class"]}/class' if s['query_per_class'] else str(s['num_query'])
    t = f'{s["train_per_class"]}/class' if s['train_per_class'] else str(s['num_train'])
    full = dataclasses.asdict(_settings_from_dict(s))
    beta = _settings_from_dict(s).beta()
    frac = _similar_fraction(s)
    extra = (f' ({", ".join(full["extra_seed_methods"])})' if full['extra_seeds'] else '')
    lines.append(
        f'| {s["name"]} | `{s["spec"]}` | {q} queries, rest database, {t} training from it, '
        f'mAP@{s["map_topk"] or "all"} | {s["num_steps"]} | {s["batch_size"]} | '
        f'{s["learning_rate"]:g} | β=(1+{beta["gamma"]:.3g}·t)^0.5 every {beta["step_size"]} '
        f'steps (β_T≈{(1 + beta["gamma"] * (s["num_steps"] // beta["step_size"] * beta["step_size"] - beta["step_size"])) ** 0.5:.1f}) | '
        f'{"–" if frac is None else f"{frac:.2%}"} | {list(full["seeds"])} / '
        f'{list(full["extra_seeds"])}{extra} | '
        f'{list(full["bits"])} |')
  lines += [
      '',
      'Common to every deep cell: `small_cnn` backbone at native size (8×8, 28×28, 56×28), '
      'Adam (weight decay 1e-4), hash layer lr ×10, lr ×0.5 at half the steps, α = 10/bits, '
      'batch pairs = all ordered pairs of the batch. Ablations: *w/o weighting* = '
      "`loss.weighting='none'`; *w/o continuation* = `beta.schedule='constant'` (β = 1), sign "
      'at test; *continuous codes* = HashNet\'s own runs ranked by −⟨tanh(β_T z_q), '
      'tanh(β_T z_i)⟩ (no sign; ties by index, so no tie interval); DHN = `loss.name=\'dhn\'` '
      '(unweighted pairwise NLL + 0.1 × log cosh(|u|−1), u = tanh(z), β = 1). LSH: Gaussian '
      'projections of the centred pixels (in [−1, 1]); ITQ: PCA to K dims + 50 rotation '
      'iterations; both fitted on the training images, one draw per seed.',
      '',
      'The 100-class set (`pairs:`): item n puts MNIST test image a_n left of image b_n '
      '(two seeded permutations; 10,000 items, 56×28 px), label 10·y(a_n) + y(b_n) '
      '(`pair_digits_source`). Evaluation is mAP@1000 over Hamming ranking with ties by '
      'database index (`hashjax.metrics`); queries with no relevant item in the top K count 0.',
      '',
      'Plans: the default `--plan=full` runs every method × {16, 32, 48, 64} bits × 3 seeds on '
      'all three sets; `--plan=cpu` runs seed 0 everywhere plus seeds 1 and 2 of HashNet at 48 '
      'bits on MNIST, and only 48 bits on the 100-class set; `--quick` is a smoke test. '
      '`--resume` keeps the cells of an interrupted run; `--workers=2` runs two single-threaded '
      'processes, one per core.',
  ]
  with open(report_path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  sys.exit(main())
