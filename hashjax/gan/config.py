"""Typed, validated settings of the GAN job, built from an ml_collections ConfigDict
(see configs/dcgan_digits.py); every check raises a one-line `ConfigError`."""

from __future__ import annotations

import dataclasses

from hashjax.runtime.settings import CheckpointConfig, build, one_of, positive_int, require

GAN_LOSSES = ('non_saturating', 'minimax')
GAN_MODELS = ('dcgan', 'mlp')
TOY_DATASETS = ('ring8', 'grid25')  # 2-D mixtures (hashjax.gan.toy2d), for model='mlp'


@dataclasses.dataclass(frozen=True)
class GanConfig:
  """Everything `gan_trainer.train_and_evaluate` needs (see configs/dcgan_digits.py)."""
  dataset: str
  image_size: int
  nz: int
  ngf: int
  ndf: int
  conditional: bool
  batch_size: int
  num_steps: int
  learning_rate: float
  beta1: float
  beta2: float
  gan_loss: str
  label_smoothing: float
  n_critic: int
  ema_decay: float
  seed: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  sample_every: int
  num_samples: int
  checkpoint: CheckpointConfig
  model: str = 'dcgan'  # or 'mlp' (2-D toy data; ngf / ndf are the hidden widths)
  eval_holdout: int = 0  # real examples kept out of training for the JSD estimate; 0: none
  eval_steps: int = 300  # training steps of the estimator's fresh classifier
  labels: str | None = None  # a label table (hashjax.data.label_table) for a folder: dataset
  unlabelled: str = 'drop'  # images without a row in `labels`: 'drop' or 'keep' (unknown)
  collapse_window: int = 5  # logged steps of D winning outright before a warning; 0: never
  classifier_steps: int = 0  # > 0: train an attribute classifier, score samples at each eval


def gan_config(config) -> GanConfig:
  """Validates a GAN ConfigDict (or plain dict) and returns a frozen `GanConfig`."""
  values = dict(config.to_dict() if hasattr(config, 'to_dict') else config)
  values['checkpoint'] = build(CheckpointConfig, dict(values.get('checkpoint') or {}),
                                prefix='checkpoint.')
  cfg = build(GanConfig, values)
  one_of('image_size', cfg.image_size, (32, 64))
  one_of('gan_loss', cfg.gan_loss, GAN_LOSSES)
  for name in ('nz', 'ngf', 'ndf', 'num_steps', 'n_critic', 'log_every', 'eval_every',
               'checkpoint_every', 'sample_every', 'num_samples'):
    positive_int(name, getattr(cfg, name))
  positive_int('batch_size', cfg.batch_size, 2)
  require(cfg.learning_rate > 0, f'learning_rate={cfg.learning_rate!r} must be > 0')
  for name in ('beta1', 'beta2', 'ema_decay'):
    require(0 <= getattr(cfg, name) < 1, f'{name}={getattr(cfg, name)!r} must be in [0, 1)')
  require(0 <= cfg.label_smoothing < 1,
           f'label_smoothing={cfg.label_smoothing!r} must be in [0, 1)')
  one_of('model', cfg.model, GAN_MODELS)
  positive_int('eval_holdout', cfg.eval_holdout, 0)
  positive_int('eval_steps', cfg.eval_steps)
  require(cfg.eval_holdout == 0 or cfg.eval_holdout >= 16,
           f'eval_holdout={cfg.eval_holdout} must be 0 (no JSD estimate) or ≥ 16')
  toy = cfg.dataset in TOY_DATASETS
  require(toy == (cfg.model == 'mlp'),
           f"model={cfg.model!r} does not fit dataset={cfg.dataset!r}: model='mlp' trains on "
           f"the 2-D datasets {', '.join(TOY_DATASETS)}, model='dcgan' on images")
  require(not (toy and cfg.conditional), f'conditional=True needs classes; {cfg.dataset} has none')
  require(cfg.labels is None or cfg.dataset.startswith('folder:'),
           f'labels={cfg.labels!r} is a label table for a folder: dataset, not '
           f'dataset={cfg.dataset!r}')
  one_of('unlabelled', cfg.unlabelled, ('drop', 'keep'))
  positive_int('collapse_window', cfg.collapse_window, 0)
  positive_int('classifier_steps', cfg.classifier_steps, 0)
  require(not cfg.classifier_steps or (cfg.labels is not None and cfg.conditional),
           f'classifier_steps={cfg.classifier_steps} scores an attribute-conditioned GAN: it '
           'needs labels=FILE.csv and conditional=True')
  return cfg
