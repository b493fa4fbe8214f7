"""The GAN's state and its one pure train step (D then G, then the EMA of G), for the DCGAN on
images and the MLP GAN on the 2-D mixtures (config `model`); `job` runs it in the loop."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from hashjax.gan import losses
from hashjax.gan.config import GanConfig
from hashjax.gan.divergence import jsd_lower_bound
from hashjax.models.dcgan import Discriminator, Generator
from hashjax.models.mlp_gan import MLPDiscriminator, MLPGenerator
from hashjax.runtime import loop, parallel


class GANState(struct.PyTreeNode):
  """Both networks' params, BatchNorm statistics and optimizer states, and the EMA of G."""
  step: jax.Array
  g_params: Any
  g_stats: Any
  d_params: Any
  d_stats: Any
  g_opt: Any
  d_opt: Any
  ema_params: Any
  g_apply: Callable = struct.field(pytree_node=False)
  d_apply: Callable = struct.field(pytree_node=False)
  g_tx: optax.GradientTransformation = struct.field(pytree_node=False)
  d_tx: optax.GradientTransformation = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the models need to know about the data: classes (sub-folders, digits) or the
  categorical attributes of a label table (names, and each one's value names)."""
  channels: int
  num_classes: int  # 0: no class labels
  attribute_names: tuple[str, ...] = ()
  attribute_values: tuple[tuple[str, ...], ...] = ()

  @property
  def attribute_sizes(self) -> tuple[int, ...]:
    return tuple(len(v) for v in self.attribute_values)


def make_models(cfg: GanConfig, spec: DataSpec):
  """(generator, discriminator) flax modules for `cfg.model`."""
  if cfg.model == 'mlp':
    return MLPGenerator(hidden=cfg.ngf), MLPDiscriminator(hidden=cfg.ndf)
  classes = spec.num_classes if cfg.conditional else 0
  sizes = spec.attribute_sizes if cfg.conditional else ()
  return (Generator(image_size=cfg.image_size, nz=cfg.nz, ngf=cfg.ngf, channels=spec.channels,
                    num_classes=classes, attribute_sizes=sizes),
          Discriminator(image_size=cfg.image_size, ndf=cfg.ndf, num_classes=classes,
                        attribute_sizes=sizes))


def init_state(cfg: GanConfig, spec: DataSpec, rng: jax.Array) -> GANState:
  """A fresh state on one device (jit-traceable; `create_state` replicates it)."""
  generator, discriminator = make_models(cfg, spec)
  g_rng, d_rng = jax.random.split(rng)
  labels = (jnp.zeros((1, len(spec.attribute_sizes)) if spec.attribute_sizes else (1,),
                      jnp.int32) if cfg.conditional else None)
  g_vars = generator.init(g_rng, jnp.zeros((1, cfg.nz)), labels)
  example = (2,) if cfg.model == 'mlp' else (cfg.image_size, cfg.image_size, spec.channels)
  d_vars = discriminator.init(d_rng, jnp.zeros((1, *example)), labels)
  tx = optax.adam(cfg.learning_rate, b1=cfg.beta1, b2=cfg.beta2)
  return GANState(step=jnp.zeros((), jnp.int32), g_params=g_vars['params'],
                  g_stats=g_vars.get('batch_stats', {}), d_params=d_vars['params'],
                  d_stats=d_vars.get('batch_stats', {}), g_opt=tx.init(g_vars['params']),
                  d_opt=tx.init(d_vars['params']), ema_params=g_vars['params'],
                  g_apply=generator.apply, d_apply=discriminator.apply, g_tx=tx, d_tx=tx)


def create_state(cfg: GanConfig, spec: DataSpec, rng, mesh: Mesh | None = None) -> GANState:
  """Initialises both networks, replicated over the mesh (jitted init with out shardings)."""
  return loop.init_replicated(functools.partial(init_state, cfg, spec), rng,
                              mesh or parallel.make_mesh())


def discriminator_update(state: GANState, d_params, d_stats, d_opt, real, real_labels, fake,
                         fake_labels, *, label_smoothing: float):
  """One D step. Real and fake go through D as two separate batches, so BatchNorm never
  mixes their statistics (the running averages see the real batch, then the fake one).

  Returns:
    (d_params, d_stats, d_opt, d_loss, logits_real [B], logits_fake [B]).
  """
  def objective(params):
    logits_real, upd = state.d_apply({'params': params, 'batch_stats': d_stats}, real,
                                     real_labels, train=True, mutable=['batch_stats'])
    logits_fake, upd = state.d_apply({'params': params,
                                      'batch_stats': upd.get('batch_stats', {})},
                                     fake, fake_labels, train=True, mutable=['batch_stats'])
    loss = losses.discriminator_loss(logits_real, logits_fake, label_smoothing=label_smoothing)
    return loss, (logits_real, logits_fake, upd.get('batch_stats', {}))

  (loss, (logits_real, logits_fake, new_stats)), grads = jax.value_and_grad(
      objective, has_aux=True)(d_params)
  updates, d_opt = state.d_tx.update(grads, d_opt, d_params)
  return (optax.apply_updates(d_params, updates), new_stats, d_opt, loss, logits_real,
          logits_fake)


def train_step(state: GANState, batch: dict[str, jax.Array], rng: jax.Array, *,
               cfg: GanConfig, num_classes: int, attributes: bool = False
               ) -> tuple[GANState, dict[str, jax.Array]]:
  """`n_critic` discriminator updates, then one generator update, then the EMA of G.

  As in the reference PyTorch DCGAN loop, the generator update reuses the last D step's fake
  batch (one forward pass of G per step; G's BatchNorm statistics are updated once per fake
  batch) and scores it with the just-updated D.

  Args:
    batch: {'image': float32 [B, S, S, C] in [−1, 1], 'label': int [B] classes, or int
      [B, A] attribute ids (−1: unknown) with `attributes`}.
    rng: the run's base key; this step uses fold_in(rng, state.step).
    num_classes: the class-conditional GAN draws fake classes uniformly from these.
    attributes: the attribute-conditional GAN generates for the batch's own attribute rows
      (so the fakes follow the data's joint distribution of attributes).

  Returns:
    (state, metrics): d_loss, g_loss (nats), d_real / d_fake = mean D(x) / D(G(z)), and
    jsd_lower_bound = (log 4 + V)/2 nats from the last D step's logits.
  """
  key = jax.random.fold_in(rng, state.step)
  real = batch['image']
  b = real.shape[0]
  conditional = cfg.conditional and (num_classes > 0 or attributes)
  real_labels = batch['label'] if conditional else None

  def noise(k):
    z_key, label_key = jax.random.split(k)
    labels = (real_labels if attributes else
              jax.random.randint(label_key, (b,), 0, num_classes) if conditional else None)
    return jax.random.normal(z_key, (b, cfg.nz)), labels

  def generate(g_params, g_stats, z, labels):
    fake, upd = state.g_apply({'params': g_params, 'batch_stats': g_stats}, z, labels,
                              train=True, mutable=['batch_stats'])
    return fake, upd.get('batch_stats', {})

  g_stats, d_params, d_stats, d_opt = state.g_stats, state.d_params, state.d_stats, state.d_opt
  for i in range(cfg.n_critic):
    z, fake_labels = noise(jax.random.fold_in(key, i))
    if i < cfg.n_critic - 1:
      fake, g_stats = generate(state.g_params, g_stats, z, fake_labels)
    else:  # the last fake batch is kept, with G's backward pass, for the G update
      fake, g_vjp, g_stats = jax.vjp(lambda p: generate(p, g_stats, z, fake_labels),
                                     state.g_params, has_aux=True)
    d_params, d_stats, d_opt, d_loss, logits_real, logits_fake = discriminator_update(
        state, d_params, d_stats, d_opt, real, real_labels, jax.lax.stop_gradient(fake),
        fake_labels, label_smoothing=cfg.label_smoothing)

  def g_objective(fake):
    # The updated D, in training mode as in the reference loop; its statistics are dropped.
    logits, _ = state.d_apply({'params': d_params, 'batch_stats': d_stats}, fake, fake_labels,
                              train=True, mutable=['batch_stats'])
    return losses.generator_loss(logits, kind=cfg.gan_loss)

  g_loss, d_fake = jax.value_and_grad(g_objective)(fake)
  grads, = g_vjp(d_fake)
  updates, g_opt = state.g_tx.update(grads, state.g_opt, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  # EMA with warm-up: min(decay, (1 + t)/(10 + t)), so early samples are not the init.
  t = state.step.astype(jnp.float32)
  decay = jnp.minimum(cfg.ema_decay, (1.0 + t) / (10.0 + t))
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, g_params)
  new_state = state.replace(step=state.step + 1, g_params=g_params, g_stats=g_stats,
                            d_params=d_params, d_stats=d_stats, g_opt=g_opt, d_opt=d_opt,
                            ema_params=ema)
  metrics = {'d_loss': d_loss, 'g_loss': g_loss,
             'd_real': jnp.mean(jax.nn.sigmoid(logits_real)),
             'd_fake': jnp.mean(jax.nn.sigmoid(logits_fake)),
             'jsd_lower_bound': jsd_lower_bound(logits_real, logits_fake).nats}
  return new_state, metrics


def bound_train_step(cfg: GanConfig, num_classes: int, attributes: bool = False):
  """`train_step` with the settings bound (unjitted; the loop jits it)."""
  return functools.partial(train_step, cfg=cfg, num_classes=num_classes, attributes=attributes)


def make_train_step(cfg: GanConfig, num_classes: int, mesh: Mesh | None = None,
                    attributes: bool = False):
  """The jitted step (`loop.jit_train_step`): batch sharded on 'data', state replicated and
  donated."""
  return loop.jit_train_step(bound_train_step(cfg, num_classes, attributes),
                             mesh or parallel.make_mesh())
