"""Updating a finished HashNet run with new images and labels, the old model as the prior.

`updating.from_workdir` names the finished run; its final checkpoint gives θ₀ (params and
BatchNorm statistics), both the starting point and the prior's centre, and its codes.npz the
codes of the items already indexed. The optimizer starts fresh; β continues from the old
run's last step. The objective on the update's data (split.stage='new', hashjax.increments):

  HashNet's loss + λ·prior(θ) + μ·anchor
  prior   'none': 0; 'l2': ½‖θ − θ₀‖²; 'laplace': ½Σ Fᵢ(θᵢ − θ₀ᵢ)² (F from the old run's
          fisher.npz, hashjax.priors)
  anchor  `code_anchor_loss` between the new tanh(βz) of indexed (old database) images and
          their stored codes, a batch of them drawn with every training batch
          (μ = updating.code_anchor_weight; off at 0)

Evaluation scores every query (encoded by the new model) against the database twice: with
every item re-encoded, and with the items already indexed keeping their stored codes (only
new items encoded: updating.database_codes='keep' writes those to codes.npz). Each on all
queries, the old classes' and the new classes' (`map_<codes>_<queries>`), with the code-flip
rate of the indexed items and the database bits recomputed.

  python -m hashjax.update fisher --workdir=RUN   # fisher.npz for a run made without it
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hashjax import codes as codes_lib
from hashjax import data as data_lib
from hashjax import checkpoint, disk, hash_trainer, increments, loop, metrics, parallel, priors
from hashjax.config import ConfigError, HashConfig, hash_config
from hashjax.models import hash_activation

log = logging.getLogger(__name__)
FISHER_FILE = hash_trainer.FISHER_FILE


class UpdateState(hash_trainer.TrainState):
  """A TrainState with the prior: its centre θ₀ and its diagonal precision (F for 'laplace',
  else {})."""
  center: Any = None
  fisher: Any = None


def code_anchor_loss(h_BxK: jax.Array, old_codes_BxK: jax.Array, *, alpha: float) -> jax.Array:
  """HashNet's likelihood that each indexed image's new code and its own stored code are a
  similar pair: the mean over i of −log σ(α⟨h_i, b_i⟩) = softplus(−α⟨h_i, b_i⟩). Scalar,
  nats per item; low when the new model puts indexed images at their stored codes, so new
  queries still find the old, unchanged database codes.

  Args:
    h_BxK: the new model's tanh(βz) of B indexed images. old_codes_BxK: their stored ±1 codes.
    alpha: the likelihood's scale (10 / K by default in HashNet).
  """
  theta_B = alpha * jnp.sum(jnp.asarray(h_BxK, jnp.float32) * old_codes_BxK, axis=-1)
  return jnp.mean(jax.nn.softplus(-theta_B))


def update_step(state: UpdateState, batch: dict[str, jax.Array], rng: jax.Array, *, cfg,
                beta_offset: int, loss_fn, beta_fn, lr_fn):
  """One update step (the module docstring's objective); metrics as `train_step`'s plus
  prior (the penalty before λ) and anchor. With the anchor on, the batch also holds
  'anchor_image' [B, H, W, C] and 'anchor_code' (±1 float32 [B, K]): indexed items and their
  stored codes (`UpdateJob.examples`)."""
  u = cfg.updating
  beta = beta_fn(state.step + beta_offset)
  dropout_rng = jax.random.fold_in(rng, state.step)

  def objective(params):
    z_BxK, updates = state.apply_fn(state.variables(params), batch['image'], train=True,
                                    rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    h_BxK = hash_activation(z_BxK, beta)
    loss = loss_fn(h_BxK, batch['label'])
    prior = jnp.zeros((), jnp.float32)
    if u.prior != 'none':
      prior = priors.laplace_penalty(params, state.center,
                                     state.fisher if u.prior == 'laplace' else None)
    anchor = jnp.zeros((), jnp.float32)
    if u.code_anchor_weight:  # inference mode: the anchor images leave BatchNorm's statistics
      z_anchor = state.apply_fn(state.variables(params), batch['anchor_image'], train=False)
      anchor = code_anchor_loss(hash_activation(z_anchor, beta), batch['anchor_code'],
                                alpha=cfg.alpha)
    total = loss + u.prior_weight * prior + u.code_anchor_weight * anchor
    return total, (loss, prior, anchor, h_BxK, updates)

  (_, (loss, prior, anchor, h_BxK, updates)), grads = jax.value_and_grad(
      objective, has_aux=True)(state.params)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
      batch_stats=updates.get('batch_stats', state.batch_stats), opt_state=opt_state)
  return new_state, {'loss': loss, 'prior': prior, 'anchor': anchor, 'beta': beta,
                     'lr': lr_fn(state.step),
                     'saturation': jnp.mean((jnp.abs(h_BxK) > 0.99).astype(jnp.float32))}


def _init_update_state(cfg: HashConfig, image_shape, rng) -> UpdateState:
  base = hash_trainer.init_state(cfg, image_shape, rng)
  zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)  # noqa: E731
  return UpdateState(step=base.step, params=base.params, batch_stats=base.batch_stats,
                     opt_state=base.opt_state, apply_fn=base.apply_fn, tx=base.tx,
                     center=zeros(base.params),
                     fisher=zeros(base.params) if cfg.updating.prior == 'laplace' else {})


# -- the finished run ------------------------------------------------------------------------
class _Shape(loop.Job):
  """Enough of a HashJob to restore a run's checkpoint (no data loaded)."""

  def __init__(self, cfg: HashConfig, image_shape):
    self.cfg = cfg
    self.init_state = functools.partial(hash_trainer.init_state, cfg, image_shape)


def _read_json(path: str, what: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise ConfigError(f'{path} does not exist: {what}') from None
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} cannot be read ({disk.short_error(e)}): {what}') from None


def base_config(workdir: str) -> tuple[HashConfig, int]:
  """(the finished run's settings, its final step) from its config.json and eval.json; a
  workdir that is not a finished HashNet run is a one-line `ConfigError`."""
  what = f'updating.from_workdir={workdir!r} must be a finished train.py run'
  cfg = hash_config(_read_json(os.path.join(workdir, 'config.json'), what))
  step = _read_json(os.path.join(workdir, 'eval.json'), what).get('step')
  if not isinstance(step, int):
    raise ConfigError(f'{os.path.join(workdir, "eval.json")} names no final step: {what}')
  return cfg, step


def check_compatible(cfg: HashConfig, base: HashConfig, workdir: str) -> None:
  """The update's model must be the finished run's: same backbone and bits."""
  for name in ('backbone', 'bits'):
    if getattr(cfg, name) != getattr(base, name):
      raise ConfigError(f'{name}={getattr(cfg, name)!r} differs from the run in {workdir} '
                        f'({getattr(base, name)!r}); an update keeps the model: use '
                        f'--config.{name}={getattr(base, name)!r}')


def load_base(workdir: str, image_shape) -> tuple[HashConfig, hash_trainer.TrainState, int]:
  """(settings, state of the final checkpoint, final step) of the finished run in `workdir`."""
  base, step = base_config(workdir)
  steps = checkpoint.complete_steps(os.path.join(workdir, 'checkpoints'))
  if step not in steps:
    raise ConfigError(f'{workdir} has no final checkpoint (step {step}; found: '
                      f'{", ".join(map(str, steps)) or "none"}); finish that run first')
  state, _ = loop.load_checkpoint(_Shape(base, image_shape), workdir, step)
  return base, state, step


def load_indexed_codes(workdir: str) -> dict[str, np.ndarray]:
  """The run's codes.npz: db_indices int [N], db_codes ±1 int8 [N, K]."""
  path = os.path.join(workdir, 'codes.npz')
  try:
    with np.load(path) as f:
      bits = int(f['bits'])
      return {'db_indices': np.asarray(f['db_indices']),
              'db_codes': codes_lib.unpack_codes(f['db_codes'], bits)}
  except FileNotFoundError:
    raise ConfigError(f'{path} does not exist: updating.from_workdir must be a finished '
                      'run') from None
  except data_lib.UNREADABLE_NPZ_ERRORS + (KeyError,) as e:
    raise ConfigError(f'{path} cannot be read ({disk.short_error(e)}); rerun the finished '
                      'run to write it again') from None


# -- evaluation ------------------------------------------------------------------------------
def _map(query_codes, db_codes, query_labels, db_labels, topk) -> tuple[float, list[float]]:
  report = metrics.retrieval_report(
      query_codes, db_codes, query_labels, db_labels, map_topks=(topk,),
      ties=('index', 'worst', 'best'))
  name = f'map@{"all" if topk is None else topk}'
  return report[name], [report[f'{name}_worst'], report[f'{name}_best']]


def query_groups(labels_Q: np.ndarray, new_classes: np.ndarray) -> dict[str, np.ndarray]:
  """bool masks over the queries: 'all', 'old' (classes not in new_classes), 'new'."""
  new = np.isin(labels_Q, new_classes) if np.asarray(labels_Q).ndim == 1 else np.zeros(
      len(labels_Q), bool)
  return {'all': np.ones(len(labels_Q), bool), 'old': ~new, 'new': new}


def evaluate_update(state, cfg: HashConfig, source: data_lib.Source, split: data_lib.Split,
                    indexed: dict[str, np.ndarray], new_classes: np.ndarray,
                    mesh=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Scores `state` as an update of the run whose codes are `indexed` (`load_indexed_codes`).

  Returns:
    (results, codes). results: map_<reencoded|kept>_<all|old|new> with map_..._interval
    ([worst, best] over tied orders; a group without queries is absent); map and
    map_interval of the configured `updating.database_codes` on all queries; flip_rate and
    items_flipped of the indexed items (`priors.code_flip_rate`); database_bits_recomputed.
    codes: ±1 'query' [Q, K] and 'database' [N, K] as configured.
  """
  query = np.asarray(codes_lib.sign_codes(
      hash_trainer.encode(state, source, split.query, cfg.eval_batch_size, mesh)))
  reencoded = np.asarray(codes_lib.sign_codes(
      hash_trainer.encode(state, source, split.database, cfg.eval_batch_size, mesh)))
  where = np.searchsorted(split.database, indexed['db_indices'])
  kept = reencoded.copy()
  kept[where] = indexed['db_codes']
  results: dict[str, Any] = {'step': int(state.step)}
  ql, dl = source.labels[split.query], source.labels[split.database]
  groups = query_groups(ql, new_classes)
  for name, db in (('reencoded', reencoded), ('kept', kept)):
    for group, mask in groups.items():
      if mask.any():
        value, interval = _map(query[mask], db, ql[mask], dl, cfg.map_topk)
        results[f'map_{name}_{group}'] = value
        results[f'map_{name}_{group}_interval'] = interval
  mode = 'kept' if cfg.updating.database_codes == 'keep' else 'reencoded'
  results['map'] = results[f'map_{mode}_all']
  results['map_interval'] = results[f'map_{mode}_all_interval']
  results.update(priors.code_flip_rate(indexed['db_codes'], reencoded[where]))
  recomputed = len(split.database) - (len(where) if mode == 'kept' else 0)
  results.update({'database_bits_recomputed': int(recomputed * cfg.bits), 'bits': cfg.bits,
                  'map_topk': cfg.map_topk, 'num_query': len(split.query),
                  'num_database': len(split.database), 'num_indexed': len(where)})
  return results, {'query': query, 'database': kept if mode == 'kept' else reencoded}


# -- the job ---------------------------------------------------------------------------------
class UpdateJob(hash_trainer.HashJob):
  """An update as a job of `hashjax.loop` (module docstring); outputs as HashJob's."""
  loss_keys = ('loss', 'prior', 'anchor')
  metric_modes = {'map': 'max', 'map_kept_all': 'max', 'map_reencoded_all': 'max'}

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    u = self.cfg.updating
    image_shape = self.source.images(self.split.train[:1]).shape[1:]
    self.base_cfg, self.base_step = base_config(u.from_workdir)
    check_compatible(self.cfg, self.base_cfg, u.from_workdir)
    self.indexed = load_indexed_codes(u.from_workdir)
    missing = np.setdiff1d(self.indexed['db_indices'], self.split.database)
    if len(missing):
      raise ConfigError(f'item {missing[0]} indexed by the run in {u.from_workdir} is not in '
                        "this run's database; update with that run's dataset and split")
    self.new_classes = increments.parse_classes(self.cfg.split.new_classes)
    self.image_shape = image_shape
    self.init_state = functools.partial(_init_update_state, self.cfg, image_shape)
    self.train_step = functools.partial(
        update_step, cfg=self.cfg, beta_offset=self.base_step,
        loss_fn=hash_trainer.make_loss_fn(self.cfg), beta_fn=hash_trainer.make_beta_fn(self.cfg),
        lr_fn=hash_trainer.learning_rate_schedule(self.cfg))

  def start(self, state: UpdateState, first_step: int) -> UpdateState:
    """A fresh update starts from θ₀ (and F for 'laplace'); a resumed one has them."""
    if first_step > 0:
      return state
    u = self.cfg.updating
    _, base, _ = load_base(u.from_workdir, self.image_shape)
    fisher = {}
    if u.prior == 'laplace':
      path = os.path.join(u.from_workdir, FISHER_FILE)
      if not os.path.exists(path):
        raise ConfigError(f"updating.prior='laplace' needs {path}; write it with: python -m "
                          f'hashjax.update fisher --workdir={u.from_workdir}')
      fisher, at = priors.load_fisher(path, base.params)
      if at != self.base_step:
        raise ConfigError(f'{path} is of step {at}, the run ended at {self.base_step}; write '
                          f'it again: python -m hashjax.update fisher --workdir={u.from_workdir}')
    repl = parallel.replicated(parallel.make_mesh())
    # Copies: the state is donated to the step, and one buffer may not be donated twice.
    put = lambda tree: jax.tree.map(jnp.copy, jax.device_put(tree, repl))  # noqa: E731
    log.info('update of the run in %s (step %d), prior %s', u.from_workdir, self.base_step,
             u.prior)
    return state.replace(params=put(base.params), batch_stats=put(base.batch_stats),
                         center=put(base.params), fisher=put(fisher))

  def examples(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The update's training examples; with the anchor on, as many indexed items too, drawn
    from the positions (so a resumed run draws the same), with their stored codes."""
    out = super().examples(positions)
    if self.cfg.updating.code_anchor_weight:
      rng = np.random.default_rng([self.cfg.seed, 0xA7C, *positions.tolist()])
      pick = rng.integers(0, len(self.indexed['db_indices']), size=len(positions))
      items = self.indexed['db_indices'][pick]
      out.update(anchor_image=data_lib.to_float(self.source.images(items)),
                 anchor_code=self.indexed['db_codes'][pick].astype(np.float32))
    return out

  def evaluate(self, state, step: int) -> dict[str, Any]:
    del step
    results, self.codes = evaluate_update(state, self.cfg, self.source, self.split,
                                          self.indexed, self.new_classes)
    return results


# -- python -m hashjax.update fisher --workdir=RUN ----------------------------------------
def write_fisher(workdir: str) -> str:
  """Computes fisher.npz for the finished run in `workdir` from its final checkpoint and its
  own training images (what `save_fisher=True` does at the end of a run); returns its path."""
  base, _ = base_config(workdir)
  source, split = hash_trainer.load_data(base)
  _, state, _ = load_base(workdir, source.images(split.train[:1]).shape[1:])
  path = os.path.join(workdir, FISHER_FILE)
  if not hash_trainer.save_fisher(state, base, source, split, path):
    raise ConfigError(f'{path} was not written (the disk is full); free space and rerun')
  return path


USAGE = 'usage: python -m hashjax.update fisher --workdir=RUN'


def main(argv: list[str]) -> int:
  """`fisher --workdir=RUN`: writes RUN/fisher.npz. Exit 0, or 2 with one line on stderr."""
  args = dict(a.split('=', 1) for a in argv[2:] if a.startswith('--') and '=' in a)
  if len(argv) < 2 or argv[1] != 'fisher' or set(args) != {'--workdir'} or len(argv) != 3:
    print(USAGE if argv[1:] in (['-h'], ['--help']) else
          f'hashjax.update: error: {" ".join(argv[1:]) or "no command"}; {USAGE}',
          file=sys.stderr)
    return 0 if argv[1:] in (['-h'], ['--help']) else 2
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  try:
    print(f'wrote {write_fisher(args["--workdir"])}')
  except (ConfigError, data_lib.DataError) as e:
    print(f'hashjax.update: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
