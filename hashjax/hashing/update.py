"""Updating a finished HashNet run with new images and labels, the old model as the prior.

`updating.from_workdir` names the finished run; its final checkpoint gives θ₀ (params and
BatchNorm statistics), both the starting point and the prior's centre, and its codes.npz the
codes of the items already indexed. The optimizer starts fresh; β continues from the old
run's last step. The objective on the update's data (split.stage='new', hashjax.hashing.increments):

  HashNet's loss + λ·prior(θ) + μ·anchor
  prior   'none': 0; 'l2': ½‖θ − θ₀‖²; 'laplace': ½Σ Fᵢ(θᵢ − θ₀ᵢ)² (F from the old run's
          fisher.npz, hashjax.hashing.priors)
  anchor  `code_anchor_loss` between the new tanh(βz) of indexed (old database) images and
          their stored codes, a batch of them drawn with every training batch
          (μ = updating.code_anchor_weight; off at 0)

Evaluation scores every query (encoded by the new model) against the database twice: with
every item re-encoded, and with the items already indexed keeping their stored codes (only
new items encoded: updating.database_codes='keep' writes those to codes.npz). Each on all
queries, the old classes' and the new classes' (`map_<codes>_<queries>`), with the code-flip
rate of the indexed items and the database bits recomputed.

  python -m hashjax.commands.fisher --workdir=RUN   # fisher.npz for a run made without it
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hashjax.data import base as data_base
from hashjax.data import manifest
from hashjax.hashing import evaluation, increments, job, priors
from hashjax.hashing import step as step_lib
from hashjax.hashing.config import HashConfig, hash_config
from hashjax.models import hash_activation
from hashjax.retrieval import codes as codes_lib
from hashjax.retrieval.metrics import metric_key
from hashjax.runtime import checkpoint, disk, loop, parallel
from hashjax.runtime.errors import UNREADABLE_NPZ_ERRORS, ConfigError

log = logging.getLogger(__name__)
FISHER_FILE = job.FISHER_FILE


class UpdateState(step_lib.TrainState):
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


def update_terms(state: UpdateState, params, batch: dict[str, jax.Array], h_BxK: jax.Array,
                 beta: jax.Array, *, cfg: HashConfig) -> dict[str, tuple[float, jax.Array]]:
  """The update's terms of the shared step (`step.train_step`'s extra_terms): the prior
  (λ = updating.prior_weight; the penalty before λ) and the code anchor (μ =
  updating.code_anchor_weight), each a scalar in nats. With the anchor on, the batch also
  holds 'anchor_image' [B, H, W, C] and 'anchor_code' (±1 float32 [B, K]): indexed items and
  their stored codes (`UpdateJob.examples`)."""
  del h_BxK
  u = cfg.updating
  prior = jnp.zeros((), jnp.float32)
  if u.prior != 'none':
    prior = priors.laplace_penalty(params, state.center,
                                   state.fisher if u.prior == 'laplace' else None)
  anchor = jnp.zeros((), jnp.float32)
  if u.code_anchor_weight:  # inference mode: the anchor images leave BatchNorm's statistics
    z_anchor = state.apply_fn(state.variables(params), batch['anchor_image'], train=False)
    anchor = code_anchor_loss(hash_activation(z_anchor, beta), batch['anchor_code'],
                              alpha=cfg.alpha)
  return {'prior': (u.prior_weight, prior), 'anchor': (u.code_anchor_weight, anchor)}


def _init_update_state(cfg: HashConfig, image_shape, rng) -> UpdateState:
  base = step_lib.init_state(cfg, image_shape, rng)
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
    self.init_state = functools.partial(step_lib.init_state, cfg, image_shape)


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
  recorded = _read_json(os.path.join(workdir, 'config.json'), what)
  if isinstance(recorded, dict) and {'nz', 'ngf', 'ndf'} <= set(recorded):
    raise ConfigError(f'{workdir} is a gan.py run: {what}')
  cfg = hash_config(recorded)
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


def load_base(workdir: str, image_shape) -> tuple[HashConfig, step_lib.TrainState, int]:
  """(settings, state of the final checkpoint, final step) of the finished run in `workdir`."""
  base, step = base_config(workdir)
  steps = checkpoint.complete_steps(os.path.join(workdir, 'checkpoints'))
  if step not in steps:
    raise ConfigError(f'{workdir} has no final checkpoint (step {step}; found: '
                      f'{", ".join(map(str, steps)) or "none"}); finish that run first')
  try:
    state, _ = loop.load_checkpoint(_Shape(base, image_shape), workdir, step)
  except Exception as e:  # pylint: disable=broad-except  # orbax raises a plain Exception
    if not loop.is_damaged_checkpoint_error(e):
      raise
    raise ConfigError(f'the final checkpoint (step {step}) in {workdir} does not restore '
                      f'({disk.short_error(e)}); run its train.py command again: it sets the '
                      'damaged checkpoint aside and trains the last steps again') from None
  return base, state, step


def load_indexed_codes(workdir: str, bits: int) -> dict[str, np.ndarray]:
  """The run's codes.npz: db_indices int [N], db_codes ±1 int8 [N, K]; codes of other than
  the model's `bits` (a codes.npz copied from another run) are a one-line `ConfigError`."""
  path = os.path.join(workdir, 'codes.npz')
  try:
    with np.load(path) as f:
      stored, indices, packed = int(f['bits']), np.asarray(f['db_indices']), f['db_codes']
    codes = codes_lib.unpack_codes(packed, stored)
  except FileNotFoundError:
    raise ConfigError(f'{path} does not exist: updating.from_workdir must be a finished '
                      'run') from None
  except UNREADABLE_NPZ_ERRORS + (KeyError,) as e:
    raise ConfigError(f'{path} cannot be read ({disk.short_error(e)}); rerun the finished '
                      'run to write it again') from None
  if stored != bits:
    raise ConfigError(f'{path} holds {stored}-bit codes; the model of the run in {workdir} '
                      f'gives {bits}: it is not that run\'s codes.npz')
  return {'db_indices': indices, 'db_codes': codes}


# -- the job ---------------------------------------------------------------------------------
class UpdateJob(job.HashJob):
  """An update as a job of `hashjax.runtime.loop` (module docstring); outputs as HashJob's."""
  loss_keys = ('loss', 'prior', 'anchor')

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    topk = self.cfg.map_topk
    self.metric_modes = {metric_key('map', topk): 'max',
                         metric_key('map', topk, 'kept_all'): 'max',
                         metric_key('map', topk, 'reencoded_all'): 'max'}
    u = self.cfg.updating
    image_shape = self.source.images(self.split.train[:1]).shape[1:]
    self.base_cfg, self.base_step = base_config(u.from_workdir)
    check_compatible(self.cfg, self.base_cfg, u.from_workdir)
    manifest.check(u.from_workdir, self.cfg.dataset, 'be updated')
    self.indexed = load_indexed_codes(u.from_workdir, self.base_cfg.bits)
    missing = np.setdiff1d(self.indexed['db_indices'], self.split.database)
    if len(missing):
      raise ConfigError(f'item {missing[0]} indexed by the run in {u.from_workdir} is not in '
                        "this run's database; update with that run's dataset and split")
    self.new_classes = increments.parse_classes(self.cfg.split.new_classes)
    self.image_shape = image_shape
    self.init_state = functools.partial(_init_update_state, self.cfg, image_shape)
    self.train_step = step_lib.bound_train_step(
        self.cfg, extra_terms=functools.partial(update_terms, cfg=self.cfg),
        beta_offset=self.base_step)

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
                          f'hashjax.commands.fisher --workdir={u.from_workdir}')
      try:
        fisher, at = priors.load_fisher(path, base.params)
      except UNREADABLE_NPZ_ERRORS + (KeyError,) as e:
        raise ConfigError(f'{path} is not a Fisher file of this run ({disk.short_error(e)}); '
                          'write it again: python -m hashjax.commands.fisher '
                          f'--workdir={u.from_workdir}') from None
      if at != self.base_step:
        raise ConfigError(f'{path} is of step {at}, the run ended at {self.base_step}; write '
                          f'it again: python -m hashjax.commands.fisher --workdir={u.from_workdir}')
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
      out.update(anchor_image=data_base.to_float(self.source.images(items)),
                 anchor_code=self.indexed['db_codes'][pick].astype(np.float32))
    return out

  def evaluate(self, state, step: int) -> dict[str, Any]:
    del step
    results, self.codes = evaluation.evaluate_update(state, self.cfg, self.source,
                                                     self.split, self.indexed,
                                                     self.new_classes)
    return results
