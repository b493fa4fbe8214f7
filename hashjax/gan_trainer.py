"""The GAN minimax loop: one pure jitted train step (D then G), EMA generator, sample grids,
held-out JSD estimates, disk-aware checkpoints and resume. Drives the DCGAN on images and the
MLP GAN on the 2-D toy mixtures (config `model`).

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
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from hashjax import data as data_lib
from hashjax import images as images_lib
from hashjax import losses, parallel, toy2d, training
from hashjax.checkpoint import Checkpointer, PreemptionGuard, append_or_warn, write_or_warn
from hashjax.config import TOY_DATASETS, ConfigError, GanConfig, gan_config
from hashjax.divergence import estimate_jsd, jsd_lower_bound
from hashjax.models import conv
from hashjax.models.dcgan import Discriminator, Generator
from hashjax.models.mlp_gan import MLPDiscriminator, MLPGenerator

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
  """What the models need to know about the data."""
  channels: int
  num_classes: int  # 0: unconditional


TOY_TRAIN_SIZE = 100_000  # training points drawn once from the 2-D mixture (as PacGAN)
TOY_EVAL_SAMPLES = 2500  # generated points for modes / high quality (VEEGAN, PacGAN)
TOY_KDE_FIT = 10_000  # generated points the KDE is fitted on (bandwidth = mode std / 2)
ESTIMATOR_NDF = 8  # width of the estimator's fresh DCGAN discriminator on images
ESTIMATOR_BATCH = 64  # per class, per estimator step


def make_models(cfg: GanConfig, spec: DataSpec):
  """(generator, discriminator) flax modules for `cfg.model`."""
  if cfg.model == 'mlp':
    return MLPGenerator(hidden=cfg.ngf), MLPDiscriminator(hidden=cfg.ndf)
  classes = spec.num_classes if cfg.conditional else 0
  return (Generator(image_size=cfg.image_size, nz=cfg.nz, ngf=cfg.ngf, channels=spec.channels,
                    num_classes=classes),
          Discriminator(image_size=cfg.image_size, ndf=cfg.ndf, num_classes=classes))


def _init_state(cfg: GanConfig, spec: DataSpec, rng: jax.Array) -> GANState:
  generator, discriminator = make_models(cfg, spec)
  g_rng, d_rng = jax.random.split(rng)
  labels = jnp.zeros((1,), jnp.int32) if cfg.conditional else None
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
  mesh = mesh or parallel.make_mesh()
  init = jax.jit(functools.partial(_init_state, cfg, spec),
                 out_shardings=parallel.replicated(mesh))
  return init(parallel.replicate(rng, mesh))


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
               cfg: GanConfig, num_classes: int) -> tuple[GANState, dict[str, jax.Array]]:
  """`n_critic` discriminator updates, then one generator update, then the EMA of G.

  As in the reference PyTorch DCGAN loop, the generator update reuses the last D step's fake
  batch (one forward pass of G per step; G's BatchNorm statistics are updated once per fake
  batch) and scores it with the just-updated D.

  Args:
    batch: {'image': float32 [B, S, S, C] in [−1, 1], 'label': int [B]}.
    rng: the run's base key; this step uses fold_in(rng, state.step).

  Returns:
    (state, metrics): d_loss, g_loss (nats), d_real / d_fake = mean D(x) / D(G(z)), and
    jsd_lower_bound = (log 4 + V)/2 nats from the last D step's logits.
  """
  key = jax.random.fold_in(rng, state.step)
  real = batch['image']
  b = real.shape[0]
  conditional = cfg.conditional and num_classes > 0
  real_labels = batch['label'] if conditional else None

  def noise(k):
    z_key, label_key = jax.random.split(k)
    labels = jax.random.randint(label_key, (b,), 0, num_classes) if conditional else None
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


def make_train_step(cfg: GanConfig, num_classes: int, mesh: Mesh | None = None):
  """The jitted step: batch sharded on 'data', state replicated and donated. On CPU it is
  compiled with Eigen's convolutions (`conv.cpu_compiler_options`)."""
  mesh = mesh or parallel.make_mesh()
  step = functools.partial(train_step, cfg=cfg, num_classes=num_classes)
  repl, rows = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(step, in_shardings=(repl, rows, repl), out_shardings=(repl, repl),
                 donate_argnums=0, compiler_options=conv.cpu_compiler_options())


@jax.jit
def generate_ema(state: GANState, z_NxZ, labels_N):
  """Samples of the EMA generator (BatchNorm in inference mode): [N, S, S, C] in [−1, 1]."""
  return state.g_apply({'params': state.ema_params, 'batch_stats': state.g_stats}, z_NxZ,
                       labels_N, train=False)


def fixed_noise(cfg: GanConfig, spec: DataSpec) -> tuple[np.ndarray, np.ndarray | None]:
  """The noise (and, for the conditional GAN, the class of each column) of every sample grid."""
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(cfg.seed + 7919),
                                   (cfg.num_samples, cfg.nz)))
  labels = (np.arange(cfg.num_samples) % spec.num_classes).astype(np.int32) \
      if cfg.conditional else None
  return z, labels


def write_sample_image(path: str, state: GANState, cfg: GanConfig, spec: DataSpec, z=None,
                       labels=None) -> bool:
  """A grid PNG of EMA samples, or for 2-D data a scatter plot over the data's modes (2,500
  points unless `z` is given). False when the disk is full (or, for a scatter plot,
  matplotlib is missing)."""
  if cfg.model != 'mlp':
    return images_lib.save_png(path, sample_grid(state, cfg, spec, z, labels))
  if z is None:
    z = _eval_noise(cfg, TOY_EVAL_SAMPLES, 0)
  points = np.asarray(parallel.to_host(generate_ema(state, z, None)))
  return _save_scatter(path, points, toy2d.DATASETS[cfg.dataset](),
                       f'{cfg.dataset}: {len(points)} EMA-generator samples, step {int(state.step)}')


def sample_grid(state: GANState, cfg: GanConfig, spec: DataSpec, z=None, labels=None
                ) -> np.ndarray:
  """uint8 grid image of EMA-generator samples (one class per column when conditional)."""
  if z is None:
    z, labels = fixed_noise(cfg, spec)
  images = images_lib.to_uint8(parallel.to_host(generate_ema(state, z, labels)))
  ncol = spec.num_classes if cfg.conditional else int(np.ceil(np.sqrt(len(z))))
  return images_lib.make_grid(images, ncol=ncol, scale=max(1, 64 // cfg.image_size))


def load_images(cfg: GanConfig, cache_dir: str | None) -> tuple[np.ndarray, np.ndarray, DataSpec]:
  """All training images as uint8 [N, S, S, C] at the model resolution, labels [N]."""
  source = data_lib.load_source(
      cfg.dataset, image_size=cfg.image_size if cfg.dataset.startswith('folder:') else None,
      cache_dir=cache_dir)
  labels = np.asarray(source.labels)
  if cfg.conditional and labels.ndim != 1:
    raise ConfigError('conditional=True needs single-label data (class ids)')
  images = data_lib.fit_to_size(np.asarray(source.images(np.arange(len(source)))),
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


def _as_float(examples: np.ndarray) -> np.ndarray:
  return data_lib.to_float(examples) if examples.dtype == np.uint8 else examples


def quantize_to_uint8_grid(images: np.ndarray) -> np.ndarray:
  """Float images in [−1, 1] → the nearest of the 256 values uint8 data takes after
  `data.to_float` (same shape, float32). Real images lie on that grid and continuous samples
  do not, so without this a discriminator can tell them apart by grid membership alone (the
  JSD between a continuous and a discrete distribution is log 2)."""
  levels = np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255)
  return data_lib.to_float(levels.astype(np.uint8))


def _eval_noise(cfg: GanConfig, n: int, salt: int) -> np.ndarray:
  return np.asarray(jax.random.normal(jax.random.PRNGKey(cfg.seed + 31337 + salt), (n, cfg.nz)))


def evaluate_jsd(state: GANState, cfg: GanConfig, holdout: np.ndarray,
                 holdout_labels: np.ndarray) -> dict[str, Any]:
  """One eval.jsonl row: `estimate_jsd` of EMA samples (images: on the data's uint8 grid)
  against the held-out real data (nats; `jsd`, `jsd_ci_low`, `jsd_ci_high`,
  `jsd_accuracy`), and for 2-D data `modes`,
  `high_quality` (on 2,500 samples) and `kde_jsd` (nats; known mixture vs a Gaussian KDE of
  10,000 other samples, bandwidth `kde_bandwidth` = mode std / 2)."""
  start = time.perf_counter()
  step = int(state.step)
  real = _as_float(holdout)
  row: dict[str, Any] = {'step': step}
  if cfg.model == 'mlp':
    mixture = toy2d.DATASETS[cfg.dataset]()
    fake = np.asarray(parallel.to_host(generate_ema(state, _eval_noise(cfg, TOY_EVAL_SAMPLES, 0),
                                                    None)))
    fit = np.asarray(parallel.to_host(generate_ema(state, _eval_noise(cfg, TOY_KDE_FIT, 1),
                                                   None)))
    stats = toy2d.mode_stats(fake, mixture)
    bandwidth = mixture.std / 2
    row.update(modes=stats.modes, num_modes=len(mixture.means_Kx2),
               high_quality=stats.high_quality, kde_bandwidth=bandwidth,
               kde_jsd=toy2d.kde_jsd(mixture, real, fit, fake, bandwidth))
    estimate = estimate_jsd(real, fake, classifier='mlp', steps=cfg.eval_steps, seed=cfg.seed)
  else:
    labels = holdout_labels if cfg.conditional else None
    fake = np.asarray(parallel.to_host(generate_ema(state, _eval_noise(cfg, len(real), 0),
                                                    labels)))
    if holdout.dtype == np.uint8:  # compare images as stored: on the data's 8-bit grid
      fake = quantize_to_uint8_grid(fake)
    estimate = estimate_jsd(real, fake, classifier='dcgan_d', steps=cfg.eval_steps,
                            seed=cfg.seed, ndf=ESTIMATOR_NDF, batch_size=ESTIMATOR_BATCH)
  row.update(jsd=estimate.jsd, jsd_ci_low=estimate.ci_low, jsd_ci_high=estimate.ci_high,
             jsd_accuracy=estimate.accuracy, eval_seconds=time.perf_counter() - start)
  return row


def _pyplot_figure(path: str, **kwargs):
  """A matplotlib Figure (Agg, no pyplot state), or None with a warning when matplotlib is
  not installed (it is optional: `pip install matplotlib`)."""
  try:
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError:
    log.warning('matplotlib is not installed, so %s is not written; pip install matplotlib',
                path)
    return None
  return Figure(**kwargs)


def _save_figure(fig, path: str) -> bool:
  return write_or_warn(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))


def _save_scatter(path: str, points_Nx2: np.ndarray, mixture: toy2d.Mixture, title: str) -> bool:
  fig = _pyplot_figure(path, figsize=(5, 5))
  if fig is None:
    return False
  ax = fig.subplots()
  ax.scatter(points_Nx2[:, 0], points_Nx2[:, 1], s=2, alpha=0.5, label='generated')
  ax.scatter(mixture.means_Kx2[:, 0], mixture.means_Kx2[:, 1], s=30, marker='x', c='red',
             label='modes')
  lim = np.abs(mixture.means_Kx2).max() + 1.5
  ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect='equal', title=title)
  ax.legend(loc='upper right', fontsize=8)
  return _save_figure(fig, path)


def save_jsd_curve(path: str, rows: list[dict[str, Any]], title: str) -> bool:
  """PNG of the estimated JSD (nats) with its confidence band over training steps."""
  fig = _pyplot_figure(path, figsize=(6, 4))
  if fig is None or not rows:
    return False
  ax = fig.subplots()
  steps = [r['step'] for r in rows]
  ax.fill_between(steps, [r['jsd_ci_low'] for r in rows], [r['jsd_ci_high'] for r in rows],
                  alpha=0.3, label='95% bootstrap CI')
  ax.plot(steps, [r['jsd'] for r in rows], 'o-', label='held-out JSD lower bound')
  if 'kde_jsd' in rows[0]:
    ax.plot(steps, [r['kde_jsd'] for r in rows], 's--', label='exact JSD vs KDE of G')
  ax.axhline(np.log(2), color='gray', ls=':', label='log 2')
  ax.set(xlabel='training step', ylabel='JSD (nats)', ylim=(-0.02, 0.72))
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  return _save_figure(fig, path)


def _read_rows(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _checkpoint_tree(state: GANState, rng, step: int, cfg: GanConfig) -> dict[str, Any]:
  return {'state': state, 'rng': rng, 'examples_seen': np.asarray(step * cfg.batch_size, np.int64)}


def restore_or_init(cfg: GanConfig, spec: DataSpec, ckpt: Checkpointer, mesh: Mesh,
                    workdir: str) -> tuple[GANState, jax.Array]:
  """The newest checkpoint in `ckpt`, or fresh networks."""
  init_rng, step_rng = np.asarray(jax.random.split(jax.random.PRNGKey(cfg.seed)))
  state = create_state(cfg, spec, init_rng, mesh)
  step_rng = parallel.replicate(step_rng, mesh)
  latest = ckpt.latest_step()
  if latest is None:
    return state, step_rng
  restored = ckpt.restore(latest, _checkpoint_tree(state, step_rng, 0, cfg))
  step = int(restored['state'].step)
  if int(restored['examples_seen']) != step * cfg.batch_size:
    raise ConfigError(f'batch_size={cfg.batch_size} differs from the run in {workdir}; '
                      'resume with its batch size or use a new --workdir')
  log.info('resuming from checkpoint step %d in %s', step, ckpt.directory)
  return restored['state'], restored['rng']


def _last_good(ckpt: Checkpointer) -> str:
  latest = ckpt.latest_step()
  return 'none (no checkpoint yet)' if latest is None else f'step {latest} in {ckpt.directory}'


def train_and_evaluate(config: ml_collections.ConfigDict | GanConfig, workdir: str, *,
                       reporter: training.Reporter | None = None) -> dict[str, Any]:
  """Trains the (conditional) DCGAN, or the MLP GAN on 2-D data, as configured.

  Returns:
    Final results (also `<workdir>/eval.json`): step, jsd_lower_bound of the last logged
    step (the training D's bound on training batches), the final sample image's path, and
    with eval_holdout > 0 the held-out estimate `jsd` (nats), `jsd_ci` [low, high],
    `jsd_accuracy`, `jsd_curve` (PNG path) and, for 2-D data, modes / high_quality / kde_jsd;
    or {'preempted_at_step', 'signal'} after SIGTERM / SIGINT saved a checkpoint.
  Raises:
    training.DivergedError when a loss turns NaN/inf (naming the last good checkpoint).
  """
  cfg = config if isinstance(config, GanConfig) else gan_config(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(cfg.batch_size, mesh)
  main = parallel.is_main_process()
  reporter = reporter if reporter is not None and main else training.SilentReporter()
  os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
  if main:
    training.write_json(os.path.join(workdir, 'config.json'), _config_dict(config))
  images, labels, holdout, holdout_labels, spec = load_data(
      cfg, cache_dir=os.path.join(workdir, 'data_cache'))

  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'),
                      max_to_keep=cfg.checkpoint.max_to_keep, max_bytes=cfg.checkpoint.max_bytes,
                      async_save=cfg.checkpoint.async_save)
  state, step_rng = restore_or_init(cfg, spec, ckpt, mesh, workdir)
  first_step = int(state.step)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  eval_path = os.path.join(workdir, 'eval.jsonl')
  if main:
    training.truncate_metrics(metrics_path, first_step)
    training.truncate_metrics(eval_path, first_step)
  metrics_log = training.MetricsLog(metrics_path, reporter, ckpt.stats.as_dict)
  step_fn = make_train_step(cfg, spec.num_classes, mesh)
  loss_keys = ('d_loss', 'g_loss')

  def save(step, metrics_dev, final=False):
    row = {k: float(v) for k, v in jax.device_get(metrics_dev).items()}
    training.check_finite({**row, 'step': step}, loss_keys, _last_good(ckpt))
    ckpt.save(step, _checkpoint_tree(state, step_rng, step, cfg), final=final)

  def write_samples(step):
    if main:
      write_sample_image(os.path.join(workdir, 'samples', f'step_{step:06d}.png'), state, cfg,
                         spec)

  def evaluate():
    if main and cfg.eval_holdout:
      row = evaluate_jsd(state, cfg, holdout, holdout_labels)
      append_or_warn(eval_path, json.dumps(row) + '\n')
      reporter.evaluated(row)

  reporter.start(cfg.num_steps, first_step)
  if first_step == 0:
    evaluate()  # the untrained generator: the curve starts near log 2
  last_time, last_step, last_row = time.perf_counter(), first_step, None
  step_metrics = None
  with PreemptionGuard(ckpt) as guard:
    for step in range(first_step, cfg.num_steps):
      positions = data_lib.batch_indices(len(images), cfg.batch_size, step, cfg.seed)
      idx = positions[parallel.process_slice(cfg.batch_size)]
      local = {'image': _as_float(images[idx]), 'label': labels[idx]}
      previous = step_metrics
      state, step_metrics = step_fn(state, parallel.global_batch(local, mesh), step_rng)
      jax.block_until_ready(previous)  # at most two steps in flight
      row = metrics_log.flush()
      if row is not None:
        training.check_finite(row, loss_keys, _last_good(ckpt))
        last_row = row
      done = step + 1
      if done % cfg.log_every == 0 or done == cfg.num_steps:
        now = time.perf_counter()
        metrics_log.push(done, step_metrics, (done - last_step) * cfg.batch_size / (now - last_time))
        last_time, last_step = now, done
      if done % cfg.sample_every == 0 or done == cfg.num_steps:
        write_samples(done)
      if done % cfg.eval_every == 0 or done == cfg.num_steps:
        evaluate()
      if done == cfg.num_steps:
        break
      if guard.should_stop(done):
        training.check_finite(metrics_log.flush() or {'step': done}, loss_keys, _last_good(ckpt))
        save(done, step_metrics, final=True)
        ckpt.close()
        reporter.close()
        log.warning('%s received: saved step %d in %s; rerun to resume', guard.signal_name,
                    done, ckpt.directory)
        return {'preempted_at_step': done, 'signal': guard.signal_name}
      if done % cfg.checkpoint_every == 0:
        save(done, step_metrics)
  row = metrics_log.flush()
  if row is not None:
    training.check_finite(row, loss_keys, _last_good(ckpt))
    last_row = row
  final_step = int(state.step)
  if step_metrics is not None:
    save(final_step, step_metrics, final=True)
  ckpt.close()
  results = {'step': final_step,
             'jsd_lower_bound': None if last_row is None else last_row['jsd_lower_bound'],
             'samples': os.path.join(workdir, 'samples', f'step_{final_step:06d}.png')}
  if main and cfg.eval_holdout:
    results.update(_final_eval(workdir, eval_path, evaluate, final_step, cfg))
  if main:
    training.write_json(os.path.join(workdir, 'eval.json'), results)
  reporter.evaluated(results)
  reporter.close()
  return results


def _final_eval(workdir, eval_path, evaluate, final_step, cfg) -> dict[str, Any]:
  """The last eval.jsonl row (evaluated now if the final step has none) and the JSD curve."""
  rows = _read_rows(eval_path)
  if not rows or rows[-1]['step'] != final_step:
    evaluate()
    rows = _read_rows(eval_path)
  last = rows[-1]
  curve = os.path.join(workdir, 'jsd_curve.png')
  title = f'JSD(data ‖ EMA generator), held-out\n{os.path.basename(cfg.dataset)}'
  out = {'jsd': last['jsd'], 'jsd_ci': [last['jsd_ci_low'], last['jsd_ci_high']],
         'jsd_accuracy': last['jsd_accuracy'],
         'jsd_curve': curve if save_jsd_curve(curve, rows, title) else None}
  out.update({k: last[k] for k in ('modes', 'num_modes', 'high_quality', 'kde_jsd',
                                   'kde_bandwidth') if k in last})
  return out


def sample(config: ml_collections.ConfigDict | GanConfig, workdir: str, num: int,
           out: str | None = None) -> str:
  """Writes a grid of `num` EMA-generator samples from the newest checkpoint; returns its path."""
  cfg = config if isinstance(config, GanConfig) else gan_config(config)
  if num < 1:
    raise ConfigError(f'num={num} must be ≥ 1')
  mesh = parallel.make_mesh()
  spec = load_data(cfg, cache_dir=os.path.join(workdir, 'data_cache'))[-1]
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  try:
    if ckpt.latest_step() is None:
      raise ConfigError(f'no checkpoint in {ckpt.directory}; train first with the same '
                        '--workdir')
    state, _ = restore_or_init(cfg, spec, ckpt, mesh, workdir)
  finally:
    ckpt.close()  # also on error: orbax's background cleanup must end before exit
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(cfg.seed + 104729), (num, cfg.nz)))
  labels = (np.arange(num) % spec.num_classes).astype(np.int32) if cfg.conditional else None
  path = out or os.path.join(workdir, 'samples', f'sample_{int(state.step):06d}.png')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if not write_sample_image(path, state, cfg, spec, z, labels):
    raise ConfigError(f'could not write {path}: the disk is full (or, for a 2-D scatter '
                      'plot, matplotlib is missing)')
  return path


def _config_dict(config) -> dict[str, Any]:
  if isinstance(config, GanConfig):
    return dataclasses.asdict(config)
  return config.to_dict()
