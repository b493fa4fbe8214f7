"""The GAN job: both networks' state, one pure train step (D then G, then the EMA of G),
sample grids and held-out JSD estimates (`gan_eval`), run by `hashjax.loop`. Drives the DCGAN
on images and the MLP GAN on the 2-D toy mixtures (config `model`).

Files written to the workdir: `config.json`, `metrics.jsonl` (step, d_loss, g_loss, d_real,
d_fake, jsd_lower_bound, examples_per_sec, checkpoint counters), `samples/step_XXXXXX.png`
(fixed noise, EMA generator; a scatter plot for 2-D data), `eval.jsonl` (every `eval_every`
steps: `divergence.estimate_jsd` of EMA samples against held-out real data, and for 2-D data
modes captured, high-quality fraction and the KDE JSD), `jsd_curve.png`, `eval.json` and
`checkpoints/<step>/`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from hashjax.data import base as data_base
from hashjax.data import files, sources
from hashjax.gan import attribute_classifier, losses, toy2d
from hashjax.gan import evaluation as gan_eval
from hashjax.gan import pictures as gan_pictures
from hashjax.gan.collapse import CollapseWatch
from hashjax.gan.config import TOY_DATASETS, GanConfig, gan_config
from hashjax.gan.divergence import jsd_lower_bound
from hashjax.models.dcgan import Discriminator, Generator
from hashjax.models.mlp_gan import MLPDiscriminator, MLPGenerator
from hashjax.runtime import disk, loop, parallel, plumbing
from hashjax.runtime.errors import ConfigError

log = logging.getLogger(__name__)


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


TOY_TRAIN_SIZE = 100_000  # training points drawn once from the 2-D mixture (as PacGAN)


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


def _init_state(cfg: GanConfig, spec: DataSpec, rng: jax.Array) -> GANState:
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
  return loop.init_replicated(functools.partial(_init_state, cfg, spec), rng,
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


def load_images(cfg: GanConfig, cache_dir: str | None) -> tuple[np.ndarray, np.ndarray, DataSpec]:
  """All training images as uint8 [N, S, S, C] at the model resolution, and their labels:
  class ids int32 [N], or with a label table (`cfg.labels`) attribute ids int32 [N, A]."""
  if cfg.labels is not None:
    source = files.load_folder(cfg.dataset.partition(':')[2], cfg.image_size, cache_dir,
                                     labels=cfg.labels, unlabelled=cfg.unlabelled)
    spec = DataSpec(channels=3, num_classes=0, attribute_names=source.names,
                    attribute_values=source.values)
    return source.images_NxHxWxC, source.attribute_ids.astype(np.int32), spec
  source = sources.load_source(
      cfg.dataset, image_size=cfg.image_size if cfg.dataset.startswith('folder:') else None,
      cache_dir=cache_dir)
  labels = np.asarray(source.labels)
  if cfg.conditional and labels.ndim != 1:
    raise ConfigError('conditional=True needs class ids or a label table (labels=FILE.csv), '
                      f'not the multi-hot labels of {cfg.dataset}')
  images = data_base.fit_to_size(np.asarray(source.images(np.arange(len(source)))),
                                cfg.image_size)
  classes = int(labels.max()) + 1 if labels.ndim == 1 else 0
  if cfg.conditional and classes < 2:
    raise ConfigError(f'conditional=True needs at least 2 classes; {cfg.dataset} has {classes}')
  return images, labels.astype(np.int32), DataSpec(channels=images.shape[-1],
                                                   num_classes=classes)


def load_data(cfg: GanConfig, cache_dir: str | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, DataSpec]:
  """(train examples, train labels, held-out examples, held-out labels, spec).

  Images stay uint8 [N, S, S, C]; `eval_holdout` of them, drawn from (seed), are kept out of
  training for the JSD estimate. 2-D data: 100,000 float32 training points [N, 2] drawn from
  the mixture, and `eval_holdout` fresh ones.
  """
  if cfg.dataset in TOY_DATASETS:
    mixture = toy2d.DATASETS[cfg.dataset]()
    points = toy2d.sample(mixture, TOY_TRAIN_SIZE, cfg.seed)
    holdout = toy2d.sample(mixture, cfg.eval_holdout, cfg.seed + 1)
    return (points, np.zeros(len(points), np.int32), holdout,
            np.zeros(len(holdout), np.int32), DataSpec(channels=0, num_classes=0))
  images, labels, spec = load_images(cfg, cache_dir)
  if cfg.eval_holdout > len(images) // 2:
    raise ConfigError(f'eval_holdout={cfg.eval_holdout} is more than half of the '
                      f'{len(images)} examples of {cfg.dataset}; lower it (0 disables)')
  perm = np.random.default_rng(cfg.seed + 1).permutation(len(images))
  held, kept = np.sort(perm[:cfg.eval_holdout]), np.sort(perm[cfg.eval_holdout:])
  return images[kept], labels[kept], images[held], labels[held], spec


def _toy_metric_modes(cfg: GanConfig) -> dict[str, str]:
  return {'modes': 'max', 'high_quality': 'max', 'kde_jsd': 'min'} if cfg.model == 'mlp' else {}


class GanJob(loop.Job):
  """The GAN as a job of `hashjax.loop`: the state is a `GANState`; every `sample_every`
  steps a sample grid; evaluation is the held-out JSD estimate (`gan_eval.evaluate_jsd`,
  with `eval_holdout` > 0); the outputs are eval.json and jsd_curve.png."""
  loss_keys = ('d_loss', 'g_loss')
  eval_at_start = True  # the untrained generator: the JSD curve starts near log 2
  resumable = frozenset({'learning_rate', 'sample_every', 'num_samples', 'eval_steps',
                         'collapse_window', 'classifier_steps'})
  added_settings = {'labels': None, 'unlabelled': 'drop', 'collapse_window': 0,
                    'classifier_steps': 0}

  def __init__(self, config: ml_collections.ConfigDict | GanConfig, workdir: str):
    self.cfg = config if isinstance(config, GanConfig) else gan_config(config)
    self.config, self.workdir = config, workdir
    self.samples_dir = os.path.join(workdir, 'samples')
    os.makedirs(self.samples_dir, exist_ok=True)
    (self.images, self.labels, self.holdout, self.holdout_labels,
     self.spec) = load_data(self.cfg, cache_dir=os.path.join(workdir, 'data_cache'))
    self.num_examples = len(self.images)
    self.metric_modes = ({'jsd': 'min', **_toy_metric_modes(self.cfg)}
                         if self.cfg.eval_holdout else {})
    self.init_state = functools.partial(_init_state, self.cfg, self.spec)
    self.train_step = bound_train_step(self.cfg, self.spec.num_classes,
                                       attributes=bool(self.spec.attribute_sizes))
    self.collapse = CollapseWatch(self.cfg.collapse_window)
    self.grid_noise = gan_eval.fixed_noise(self.cfg, self.spec.num_classes)
    if self.cfg.conditional and self.spec.attribute_sizes:  # rows of the data's attributes
      self.grid_noise = (self.grid_noise[0], gan_eval.attribute_rows(
          self.labels, {}, self.cfg.num_samples, self.cfg.seed + 7919))

  def examples(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    return {'image': gan_eval.as_float(self.images[positions]), 'label': self.labels[positions]}

  def sample_path(self, step: int) -> str:
    return os.path.join(self.samples_dir, f'step_{step:06d}.png')

  def after_step(self, state: GANState, step: int) -> None:
    """Every sample_every steps (and at the end): the sample grid, the attribute grid and
    losses.png (the final one in `finish`); every checkpoint_every steps the interpolation
    strip."""
    if not parallel.is_main_process():
      return
    last, images = step == self.cfg.num_steps, self.cfg.model != 'mlp'
    if step % self.cfg.sample_every == 0 or last:
      gan_eval.write_sample_image(self.sample_path(step), state, self.cfg,
                                  self.spec.num_classes, *(self.grid_noise if images else ()))
      if self.cfg.conditional and self.spec.attribute_sizes:
        gan_pictures.write_attribute_grid(
            os.path.join(self.samples_dir, f'attributes_{step:06d}.png'), state, self.cfg,
            self.spec.attribute_names, self.spec.attribute_values)
      if not last:  # the last one comes with the final evaluation, in `finish`
        self.write_loss_plot()
    if images and (step % self.cfg.checkpoint_every == 0 or last):
      condition = None if self.grid_noise[1] is None else self.grid_noise[1][0]
      gan_pictures.write_interpolation(
          os.path.join(self.samples_dir, f'interpolation_{step:06d}.png'), state, self.cfg,
          condition)

  def write_loss_plot(self) -> None:
    """losses.png from metrics.jsonl and eval.jsonl as they stand."""
    read = lambda name: plumbing.read_rows(os.path.join(self.workdir, name))
    gan_pictures.save_loss_plot(os.path.join(self.workdir, 'losses.png'), read('metrics.jsonl'),
                                read('eval.jsonl'), os.path.basename(self.cfg.dataset))

  def logged(self, row: dict[str, Any], last_good) -> None:
    warning = self.collapse.update(row, last_good)
    if warning:
      log.warning(warning)

  def evaluate(self, state: GANState, step: int) -> dict[str, Any] | None:
    if not parallel.is_main_process():
      return None
    row = (gan_eval.evaluate_jsd(state, self.cfg, self.holdout, self.holdout_labels)
           if self.cfg.eval_holdout else None)
    if self.cfg.classifier_steps:
      row = {**(row or {'step': step}), **self.attribute_scores(state)}
    return row

  def attribute_scores(self, state: GANState) -> dict[str, Any]:
    """The attribute classifier's balanced accuracy on held-out real images and on samples
    (`attribute_classifier`); it is trained by `train_and_evaluate` before the GAN."""
    if not hasattr(self, '_classifier'):
      where = os.path.join(self.workdir, attribute_classifier.SUBDIR)
      cfg = attribute_classifier.ClassifierConfig(self.spec.attribute_sizes,
                                                  self.cfg.classifier_steps, self.cfg.seed)
      job = attribute_classifier.ClassifierJob(cfg, where, images=self.images,
                                               labels=self.labels,
                                               names=self.spec.attribute_names)
      with open(os.path.join(where, 'eval.json')) as f:
        self._classifier = loop.load_checkpoint(job, where)[0], json.load(f)
    classifier, real = self._classifier
    return {**{k: v for k, v in real.items() if k.endswith('_accuracy_real')},
            **attribute_classifier.score_samples(state, self.cfg, classifier, self.labels,
                                                 self.spec.attribute_names,
                                                 self.spec.attribute_values)}

  def finish(self, state: GANState, eval_row, last_log_row) -> dict[str, Any]:
    """step, jsd_lower_bound of the last logged step (the training D's bound on training
    batches), the final sample image's path, and with eval_holdout > 0 the held-out
    estimate `jsd` (nats), `jsd_ci` [low, high], `jsd_accuracy`, `jsd_curve` (PNG path)
    and, for 2-D data, modes / high_quality / kde_jsd; with classifier_steps > 0 the
    attribute accuracies (`attribute_scores`)."""
    step = int(state.step)
    results = {'step': step,
               'jsd_lower_bound': None if last_log_row is None else last_log_row['jsd_lower_bound'],
               'samples': self.sample_path(step)}
    if (parallel.is_main_process() and not os.path.exists(results['samples']) and
        not gan_eval.write_sample_image(results['samples'], state, self.cfg,
                                        self.spec.num_classes,
                                        *(self.grid_noise if self.cfg.model != 'mlp' else ()))):
      raise disk.OutputNotWritten(results['samples'], results)  # a full disk kept it out
    if parallel.is_main_process():
      self.write_loss_plot()  # after the final evaluation, which comes after the last step
    if eval_row is None:
      return results
    results.update({k: v for k, v in eval_row.items() if '_accuracy_' in k})
    if 'jsd' not in eval_row:
      return results
    curve = os.path.join(self.workdir, 'jsd_curve.png')
    title = f'JSD(data ‖ EMA generator), held-out\n{os.path.basename(self.cfg.dataset)}'
    rows = plumbing.read_rows(os.path.join(self.workdir, 'eval.jsonl'))
    results.update(jsd=eval_row['jsd'], jsd_ci=[eval_row['jsd_ci_low'], eval_row['jsd_ci_high']],
                   jsd_accuracy=eval_row['jsd_accuracy'],
                   jsd_curve=curve if gan_eval.save_jsd_curve(curve, rows, title) else None)
    results.update({k: eval_row[k] for k in ('modes', 'num_modes', 'high_quality', 'kde_jsd',
                                             'kde_bandwidth') if k in eval_row})
    return results


def train_and_evaluate(config: ml_collections.ConfigDict | GanConfig, workdir: str, *,
                       reporter: plumbing.Reporter | None = None) -> dict[str, Any]:
  """Trains the (conditional) DCGAN, or the MLP GAN on 2-D data, as configured
  (`hashjax.loop.run` over a `GanJob`); with classifier_steps > 0 first the attribute
  classifier (`attribute_classifier.train`, in <workdir>/attribute_classifier), whose scores
  every evaluation then reports.

  Returns:
    Final results (also `<workdir>/eval.json`, see `GanJob.finish`), or
    {'preempted_at_step', 'signal'} after SIGTERM / SIGINT saved a checkpoint.
  Raises:
    errors.DivergedError when a loss turns NaN/inf (naming the last good checkpoint).
  """
  cfg = config if isinstance(config, GanConfig) else gan_config(config)
  if cfg.classifier_steps:
    images, labels, spec = load_images(cfg, os.path.join(workdir, 'data_cache'))
    attribute_classifier.train(images, labels, spec.attribute_names, spec.attribute_sizes,
                               workdir, cfg.classifier_steps, cfg.seed)
  return loop.run(GanJob, config, workdir, reporter=reporter)
