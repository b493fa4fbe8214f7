"""The GAN job of `runtime.loop`: its data, its step (`gan.step`: D then G, then the EMA of
G), sample grids and held-out JSD estimates (`gan.evaluation`), and its outputs. Drives the
DCGAN on images and the MLP GAN on the 2-D toy mixtures (config `model`).

Files written to the workdir: `config.json`, `metrics.jsonl` (step, d_loss, g_loss, d_real,
d_fake, jsd_lower_bound, examples_per_sec, checkpoint counters), `samples/step_XXXXXX.png`
(fixed noise, EMA generator; a scatter plot for 2-D data), `eval.jsonl` (every `eval_every`
steps: `divergence.estimate_jsd` of EMA samples against held-out real data, and for 2-D data
modes captured, high-quality fraction and the KDE JSD), `jsd_curve.png`, `eval.json` and
`checkpoints/<step>/`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from hashjax.data import base as data_base
from hashjax.data import files, manifest, sources
from hashjax.gan import attribute_classifier, toy2d
from hashjax.gan import evaluation as gan_eval
from hashjax.gan import pictures as gan_pictures
from hashjax.gan.collapse import CollapseWatch
from hashjax.gan.config import TOY_DATASETS, GanConfig, gan_config
from hashjax.gan.step import DataSpec, GANState, bound_train_step, init_state
from hashjax.runtime import disk, loop, parallel, plumbing
from hashjax.runtime.errors import ConfigError

log = logging.getLogger(__name__)


TOY_TRAIN_SIZE = 100_000  # training points drawn once from the 2-D mixture (as PacGAN)


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
  """The GAN as a job of `hashjax.runtime.loop`: the state is a `GANState`; every `sample_every`
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
    self.samples_dir = os.path.join(workdir, 'samples')  # made by the first picture
    (self.images, self.labels, self.holdout, self.holdout_labels,
     self.spec) = load_data(self.cfg, cache_dir=os.path.join(workdir, 'data_cache'))
    self.num_examples = len(self.images)
    self.metric_modes = ({'jsd': 'min', **_toy_metric_modes(self.cfg)}
                         if self.cfg.eval_holdout else {})
    self.init_state = functools.partial(init_state, self.cfg, self.spec)
    self.train_step = bound_train_step(self.cfg, self.spec.num_classes,
                                       attributes=bool(self.spec.attribute_sizes))
    self.collapse = CollapseWatch(self.cfg.collapse_window)
    self.grid_noise = gan_eval.fixed_noise(self.cfg, self.spec.num_classes)
    if self.cfg.conditional and self.spec.attribute_sizes:  # rows of the data's attributes
      self.grid_noise = (self.grid_noise[0], gan_eval.attribute_rows(
          self.labels, {}, self.cfg.num_samples, self.cfg.seed + 7919))

  def check_data(self, resuming: bool) -> None:
    manifest.check_or_record(self.workdir, self.cfg.dataset, resuming=resuming,
                             write=parallel.is_main_process(), labels=self.cfg.labels)

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
    os.makedirs(self.samples_dir, exist_ok=True)  # also if deleted during the run
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
  (`hashjax.runtime.loop.run` over a `GanJob`); with classifier_steps > 0 first the attribute
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
