"""The GAN's evaluation and pictures: EMA-generator samples, sample grids and scatter plots,
the held-out JSD estimate (`divergence.estimate_jsd`) and its curve over training steps."""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import numpy as np

from hashjax.data import base as data_lib
from hashjax.gan import toy2d
from hashjax.gan.config import GanConfig
from hashjax.gan.divergence import estimate_jsd
from hashjax.runtime import parallel
from hashjax.runtime import pictures as images_lib
from hashjax.runtime.disk import write_or_warn

log = logging.getLogger(__name__)

TOY_EVAL_SAMPLES = 2500  # generated points for modes / high quality (VEEGAN, PacGAN)
TOY_KDE_FIT = 10_000  # generated points the KDE is fitted on (bandwidth = mode std / 2)
ESTIMATOR_NDF = 8  # width of the estimator's fresh DCGAN discriminator on images
ESTIMATOR_BATCH = 64  # per class, per estimator step


@jax.jit
def generate_ema(state, z_NxZ, labels_N):
  """Samples of the EMA generator (BatchNorm in inference mode): [N, S, S, C] in [−1, 1]."""
  return state.g_apply({'params': state.ema_params, 'batch_stats': state.g_stats}, z_NxZ,
                       labels_N, train=False)


def fixed_noise(cfg: GanConfig, num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
  """The noise (and, for the conditional GAN, the class of each column) of every sample grid."""
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(cfg.seed + 7919),
                                   (cfg.num_samples, cfg.nz)))
  labels = (np.arange(cfg.num_samples) % num_classes).astype(np.int32) \
      if cfg.conditional and num_classes else None
  return z, labels


def attribute_rows(labels_NxA: np.ndarray, chosen: dict[int, int], num: int,
                   seed: int) -> np.ndarray:
  """int32 [num, A]: the chosen values, the other attributes taken from training rows that
  have the chosen ones (any rows when none has), drawn with `seed`."""
  match = np.ones(len(labels_NxA), bool)
  for a, v in chosen.items():
    match &= labels_NxA[:, a] == v
  pool = labels_NxA[match] if match.any() else labels_NxA
  rows = pool[np.random.default_rng(seed).integers(0, len(pool), num)].astype(np.int32)
  for a, v in chosen.items():
    rows[:, a] = v
  return rows


def write_sample_image(path: str, state, cfg: GanConfig, num_classes: int, z=None,
                       labels=None) -> bool:
  """A grid PNG of EMA samples, or for 2-D data a scatter plot over the data's modes (2,500
  points unless `z` is given). False when the disk is full (or, for a scatter plot,
  matplotlib is missing)."""
  if cfg.model != 'mlp':
    return images_lib.save_png(path, sample_grid(state, cfg, num_classes, z, labels))
  if z is None:
    z = _eval_noise(cfg, TOY_EVAL_SAMPLES, 0)
  points = np.asarray(parallel.to_host(generate_ema(state, z, None)))
  return _save_scatter(path, points, toy2d.DATASETS[cfg.dataset](),
                       f'{cfg.dataset}: {len(points)} EMA-generator samples, '
                       f'step {int(state.step)}')


def sample_grid(state, cfg: GanConfig, num_classes: int, z=None, labels=None
                ) -> np.ndarray:
  """uint8 grid image of EMA-generator samples (one class per column when conditional)."""
  if z is None:
    z, labels = fixed_noise(cfg, num_classes)
  images = images_lib.to_uint8(parallel.to_host(generate_ema(state, z, labels)))
  ncol = num_classes if cfg.conditional and num_classes else int(np.ceil(np.sqrt(len(z))))
  return images_lib.make_grid(images, ncol=ncol, scale=max(1, 64 // cfg.image_size))


def as_float(examples: np.ndarray) -> np.ndarray:
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


def evaluate_jsd(state, cfg: GanConfig, holdout: np.ndarray,
                 holdout_labels: np.ndarray) -> dict[str, Any]:
  """One eval.jsonl row: `estimate_jsd` of EMA samples (images: on the data's uint8 grid)
  against the held-out real data (nats; `jsd`, `jsd_ci_low`, `jsd_ci_high`,
  `jsd_accuracy`), and for 2-D data `modes`,
  `high_quality` (on 2,500 samples) and `kde_jsd` (nats; known mixture vs a Gaussian KDE of
  10,000 other samples, bandwidth `kde_bandwidth` = mode std / 2)."""
  start = time.perf_counter()
  step = int(state.step)
  real = as_float(holdout)
  row: dict[str, Any] = {'step': step}
  if cfg.model == 'mlp':
    mixture = toy2d.DATASETS[cfg.dataset]()
    fake = np.asarray(parallel.to_host(generate_ema(state, _eval_noise(cfg, TOY_EVAL_SAMPLES, 0),
                                                    None)))
    fit = np.asarray(parallel.to_host(generate_ema(state, _eval_noise(cfg, TOY_KDE_FIT, 1),
                                                   None)))
    stats = toy2d.mode_stats(fake, mixture)
    bandwidth = mixture.std / 2
    row.update(modes=stats.modes, num_modes=len(mixture.means_Gx2),
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


def pyplot_figure(path: str, **kwargs):
  """A matplotlib Figure (Agg, no pyplot state), or None with a warning when matplotlib is
  not installed (it is optional: `pip install matplotlib`)."""
  try:
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError:
    log.warning('matplotlib is not installed, so %s is not written; pip install matplotlib',
                path)
    return None
  return Figure(**kwargs)


def save_figure(fig, path: str) -> bool:
  return write_or_warn(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))


def _save_scatter(path: str, points_Nx2: np.ndarray, mixture: toy2d.Mixture, title: str) -> bool:
  fig = pyplot_figure(path, figsize=(5, 5))
  if fig is None:
    return False
  ax = fig.subplots()
  ax.scatter(points_Nx2[:, 0], points_Nx2[:, 1], s=2, alpha=0.5, label='generated')
  ax.scatter(mixture.means_Gx2[:, 0], mixture.means_Gx2[:, 1], s=30, marker='x', c='red',
             label='modes')
  lim = np.abs(mixture.means_Gx2).max() + 1.5
  ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect='equal', title=title)
  ax.legend(loc='upper right', fontsize=8)
  return save_figure(fig, path)


def save_jsd_curve(path: str, rows: list[dict[str, Any]], title: str) -> bool:
  """PNG of the estimated JSD (nats) with its confidence band over training steps."""
  fig = pyplot_figure(path, figsize=(6, 4))
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
  return save_figure(fig, path)
