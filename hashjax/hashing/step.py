"""One hashing step for every hashing job: the train state, the optimizer, and the pure train
step (the model on a global batch, tanh(βz), the method's loss plus any extra terms a job
adds, one optax update).

A job that needs more than the method's loss (the update job's prior and code anchor) passes
`extra_terms` to `train_step` rather than writing a step of its own.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from hashjax.hashing import augment, losses, schedules
from hashjax.hashing.config import HashConfig
from hashjax.models import HashNet, hash_activation
from hashjax.runtime import loop, parallel

# extra_terms(state, params, batch, h_BxK, beta) → {name: (weight, value)}: scalars added to
# the loss as weight · value, in order; each value is logged under its name.
ExtraTerms = Callable[[Any, Any, dict, jax.Array, jax.Array], dict[str, tuple[float, jax.Array]]]


class TrainState(struct.PyTreeNode):
  """Everything that changes during training (a pytree; checkpointed whole)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def variables(self, params=None) -> dict[str, Any]:
    out = {'params': self.params if params is None else params}
    if self.batch_stats:
      out['batch_stats'] = self.batch_stats
    return out


def learning_rate_schedule(cfg: HashConfig) -> optax.Schedule:
  """Step decay: learning_rate × lr_decay_factor every lr_decay_every steps (0 = constant)."""
  if cfg.lr_decay_every == 0:
    return optax.constant_schedule(cfg.learning_rate)
  return optax.exponential_decay(cfg.learning_rate, transition_steps=cfg.lr_decay_every,
                                 decay_rate=cfg.lr_decay_factor, staircase=True)


def _param_groups(params) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'hash' if path[0].key == 'hash_layer' else 'backbone', params)


def make_optimizer(cfg: HashConfig) -> optax.GradientTransformation:
  """SGD with momentum (the paper) or Adam, weight decay, and `hash_lr_mult` × the learning
  rate on the hash layer (10× in HashNet)."""
  base = learning_rate_schedule(cfg)

  def one(schedule):
    if cfg.optimizer == 'sgd':
      return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                         optax.sgd(schedule, momentum=cfg.momentum))
    return optax.adamw(schedule, weight_decay=cfg.weight_decay)

  hash_schedule = lambda step: cfg.hash_lr_mult * base(step)
  return optax.multi_transform({'backbone': one(base), 'hash': one(hash_schedule)},
                               _param_groups)


def make_model(cfg: HashConfig) -> HashNet:
  return HashNet(bits=cfg.bits, backbone=cfg.backbone, dtype=jnp.dtype(cfg.compute_dtype))


def init_state(cfg: HashConfig, image_shape: tuple[int, ...], rng: jax.Array) -> TrainState:
  """A fresh TrainState on one device (jit-traceable; `create_train_state` replicates it).

  Args:
    image_shape: (H, W, C) of one input image. rng: PRNG key for initialisation.
  """
  model, tx = make_model(cfg), make_optimizer(cfg)
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                    apply_fn=model.apply, tx=tx)


def create_train_state(cfg: HashConfig, image_shape: tuple[int, ...], rng: jax.Array,
                       mesh: Mesh | None = None) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimizer state, replicated over the
  mesh (a jitted init with output shardings: nothing is built on one device first).

  Args:
    image_shape: (H, W, C) of one input image. rng: PRNG key for initialisation.
    mesh: the device mesh (default: all devices).
  """
  return loop.init_replicated(functools.partial(init_state, cfg, image_shape), rng,
                              mesh or parallel.make_mesh())


def make_loss_fn(cfg: HashConfig) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(h_BxK, labels) → scalar loss, with the configured loss and its settings bound."""
  if cfg.loss.name == 'dhn':
    return functools.partial(losses.dhn_loss, alpha=cfg.alpha,
                             quantization_weight=cfg.loss.quantization_weight)
  similarity = 'hard' if cfg.loss.similarity == 'views' else cfg.loss.similarity  # view ids
  return functools.partial(losses.hashnet_loss, alpha=cfg.alpha, weighting=cfg.loss.weighting,
                           class_num=cfg.loss.class_num, similarity=similarity)


def make_beta_fn(cfg: HashConfig) -> schedules.BetaSchedule:
  b = cfg.beta
  if b.schedule == 'constant':
    return schedules.make_beta_schedule('constant', beta0=b.beta0)
  return schedules.make_beta_schedule('hashnet', beta0=b.beta0, gamma=b.gamma, power=b.power,
                                      step_size=b.step_size)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               loss_fn, beta_fn, lr_fn, views_fn=None,
               extra_terms: ExtraTerms | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: the train state. batch: {'image': float32 [B, H, W, C], 'label': [B] or [B, L]}
      (and whatever `extra_terms` reads).
    rng: the run's base PRNG key; this step uses fold_in(rng, state.step) for dropout.
    loss_fn, beta_fn, lr_fn: bound by `functools.partial` before jitting.
    views_fn: label-free training: (key, images [B, ...]) → (2B views, view ids [2B]), the
      loss then sees the views with their ids as labels (None: the batch as it is).
    extra_terms: (state, params, batch, h_BxK, beta) → {name: (weight, value)}, each scalar
      added to the loss as weight · value (e.g. the update job's prior and code anchor).

  Returns:
    (new state, metrics): loss (the method's, nats per pair), beta, lr, saturation = fraction
    of |h| > 0.99, and the value of each extra term (before its weight).
  """
  beta = beta_fn(state.step)
  dropout_rng = jax.random.fold_in(rng, state.step)
  images, labels = batch['image'], batch['label']
  if views_fn is not None:
    images, labels = views_fn(jax.random.fold_in(dropout_rng, 1), images)

  def objective(params):
    z_BxK, updates = state.apply_fn(state.variables(params), images, train=True,
                                    rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    h_BxK = hash_activation(z_BxK, beta)
    loss = total = loss_fn(h_BxK, labels)
    terms = {} if extra_terms is None else extra_terms(state, params, batch, h_BxK, beta)
    for weight, value in terms.values():
      total = total + weight * value
    values = {name: value for name, (_, value) in terms.items()}
    return total, (loss, values, h_BxK, updates)

  (_, (loss, values, h_BxK, updates)), grads = jax.value_and_grad(
      objective, has_aux=True)(state.params)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
      batch_stats=updates.get('batch_stats', state.batch_stats), opt_state=opt_state)
  out = {'loss': loss, **values, 'beta': beta, 'lr': lr_fn(state.step),
         'saturation': jnp.mean((jnp.abs(h_BxK) > 0.99).astype(jnp.float32))}
  return new_state, out


def bound_train_step(cfg: HashConfig, *, extra_terms: ExtraTerms | None = None,
                     beta_offset: int = 0):
  """`train_step` with the configured loss, β schedule (at step + `beta_offset`: an update
  continues the β of the run it updates), learning rate, views (loss.similarity='views') and
  `extra_terms` bound (unjitted)."""
  views_fn = (functools.partial(augment.views, strengths=cfg.augment)
              if cfg.loss.similarity == 'views' else None)
  beta_fn = make_beta_fn(cfg)
  if beta_offset:
    beta_fn = functools.partial(lambda step, fn, offset: fn(step + offset), fn=beta_fn,
                                offset=beta_offset)
  return functools.partial(train_step, loss_fn=make_loss_fn(cfg), beta_fn=beta_fn,
                           lr_fn=learning_rate_schedule(cfg), views_fn=views_fn,
                           extra_terms=extra_terms)


def make_train_step(cfg: HashConfig, mesh: Mesh | None = None):
  """The jitted train step over the mesh (`loop.jit_train_step`): batch sharded on 'data',
  state and RNG key replicated, state donated. β and the learning rate are traced, so they
  change without recompiling; XLA inserts the gathers that give the loss every pair of the
  global batch."""
  return loop.jit_train_step(bound_train_step(cfg), mesh or parallel.make_mesh())
