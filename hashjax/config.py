"""Typed, validated settings for the hashing job, built from an ml_collections ConfigDict.

Model and training code receive these frozen dataclasses, never a ConfigDict. Every check
raises `ConfigError` with one line naming the bad value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from hashjax import extra_eval
from hashjax.augment import Strengths as AugmentConfig
from hashjax.losses import SIMILARITIES as LOSS_SIMILARITIES
from hashjax.losses import WEIGHTINGS
from hashjax.models.backbones import BACKBONES
from hashjax.pretrained import BACKBONES as PRETRAINED_BACKBONES
from hashjax.schedules import SCHEDULES


class ConfigError(ValueError):
  """A configuration value that cannot be used."""


OPTIMIZERS = ('sgd', 'adam')
LOSSES = ('hashnet', 'dhn')
# 'views': label-free, the two random views of one image are the similar pairs (augment.*)
SIMILARITIES = LOSS_SIMILARITIES + ('views',)


@dataclasses.dataclass(frozen=True)
class BetaConfig:
  schedule: str = 'hashnet'
  beta0: float = 1.0
  gamma: float = 0.005
  power: float = 0.5
  step_size: int = 200


@dataclasses.dataclass(frozen=True)
class LossConfig:
  name: str = 'hashnet'
  weighting: str = 'balanced'
  similarity: str = 'hard'
  alpha: float | None = None
  class_num: float | None = None
  quantization_weight: float = 0.1


@dataclasses.dataclass(frozen=True)
class SplitConfig:
  query_per_class: int | None = None
  num_query: int | None = None
  train_per_class: int | None = None
  num_train: int | None = None
  train_in_database: bool = True
  # Incremental protocols (hashjax.increments): which items arrive later, and which stage
  # this run sees: 'all', 'old' (before the update) or 'new' (the update's data).
  new_classes: str | None = None  # class ids arriving later, e.g. '7,8,9'
  later_fraction: float = 0.0  # or: this fraction of each class arrives later
  stage: str = 'all'
  validation: bool = False  # select settings: the test queries leave the data; see increments


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  max_to_keep: int = 2
  max_bytes: int | None = None
  best_metric: str | None = None
  async_save: bool = True


PRIORS = ('none', 'l2', 'laplace')
DATABASE_CODES = ('reencode', 'keep')
STAGES = ('all', 'old', 'new')


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
  """Updating a finished run (hashjax.update); inactive while from_workdir is None."""
  from_workdir: str | None = None
  prior: str = 'laplace'
  prior_weight: float = 1.0
  database_codes: str = 'reencode'
  code_anchor_weight: float = 0.0
  replay_per_class: int = 0


@dataclasses.dataclass(frozen=True)
class HashConfig:
  """Everything `hash_trainer.train_and_evaluate` needs (see configs/hashnet_digits.py)."""
  dataset: str
  image_size: int | None
  class_list: str | None
  backbone: str
  bits: int
  batch_size: int
  num_steps: int
  learning_rate: float
  optimizer: str
  momentum: float
  weight_decay: float
  hash_lr_mult: float
  lr_decay_every: int
  lr_decay_factor: float
  seed: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  map_topk: int | None
  eval_batch_size: int
  compute_dtype: str
  beta: BetaConfig
  loss: LossConfig
  split: SplitConfig
  checkpoint: CheckpointConfig
  pretrained: str | None = None  # torchvision-named backbone weights (.npz / .safetensors)
  updating: UpdateConfig = UpdateConfig()
  save_fisher: bool = False  # write fisher.npz (the Laplace prior of a later update) at the end
  augment: AugmentConfig = AugmentConfig()  # the views of loss.similarity='views'
  eval_extra: str = ''  # comma-separated: ndcg, neighbours, copies (hashjax.extra_eval)

  @property
  def alpha(self) -> float:
    """The likelihood's α: `loss.alpha`, or 10 / bits when unset."""
    return 10.0 / self.bits if self.loss.alpha is None else self.loss.alpha


def override(config, overrides: dict[str, Any]):
  """Sets dotted keys of a ConfigDict (e.g. {'beta.gamma': 0.1}) and returns it; a key it
  lacks is a `ConfigError`."""
  for key, value in overrides.items():
    *groups, name = key.split('.')
    node = config
    for group in groups:
      node = node.get(group) if hasattr(node, 'get') and hasattr(node, 'to_dict') else None
    if node is None or not hasattr(node, 'to_dict') or name not in node:
      raise ConfigError(f'override {key}={value!r} names no field of the config')
    node[name] = value
  return config


def _build(cls, values: dict[str, Any], prefix: str = ''):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ConfigError(f'unknown config key {prefix}{unknown[0]}; accepted: '
                      f'{", ".join(prefix + n for n in sorted(names))}')
  return cls(**values)


def _require(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def _one_of(name: str, value, accepted):
  _require(value in accepted, f'{name}={value!r} is not accepted; use one of: '
                              f'{", ".join(map(str, accepted))}')


def _positive_int(name, value, minimum=1):
  _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f'{name}={value!r} must be an integer ≥ {minimum}')


def hash_config(config) -> HashConfig:
  """Validates a hashing ConfigDict (or plain dict) and returns a frozen `HashConfig`."""
  values = dict(config.to_dict() if hasattr(config, 'to_dict') else config)
  nested = {'beta': BetaConfig, 'loss': LossConfig, 'split': SplitConfig,
            'checkpoint': CheckpointConfig, 'updating': UpdateConfig, 'augment': AugmentConfig}
  for key, cls in nested.items():
    values[key] = _build(cls, dict(values.get(key) or {}), prefix=f'{key}.')
  cfg = _build(HashConfig, values)

  _one_of('backbone', cfg.backbone, BACKBONES)
  _one_of('optimizer', cfg.optimizer, OPTIMIZERS)
  _one_of('loss.name', cfg.loss.name, LOSSES)
  _one_of('loss.weighting', cfg.loss.weighting, WEIGHTINGS)
  _one_of('loss.similarity', cfg.loss.similarity, SIMILARITIES)
  _require(cfg.loss.similarity != 'soft' or cfg.loss.name == 'hashnet',
           f"loss.similarity='soft' is HashNet's; loss.name={cfg.loss.name!r} takes 'hard'")
  _require(cfg.loss.similarity != 'views' or cfg.updating.from_workdir is None,
           "loss.similarity='views' trains from scratch; the update job (updating."
           "from_workdir) learns from labels")
  _check_augment(cfg.augment)
  try:
    extra_eval.parse(cfg.eval_extra)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(not cfg.eval_extra or cfg.updating.from_workdir is None,
           f'eval_extra={cfg.eval_extra!r} is for train.py runs; the update job '
           '(updating.from_workdir) evaluates old and new classes instead')
  _one_of('beta.schedule', cfg.beta.schedule, SCHEDULES)
  _one_of('compute_dtype', cfg.compute_dtype, ('float32', 'bfloat16'))
  _require(isinstance(cfg.bits, int) and 8 <= cfg.bits <= 1024,
           f'bits={cfg.bits!r} is out of range; accepted: integers 8..1024')
  _positive_int('batch_size', cfg.batch_size, 2)
  _positive_int('num_steps', cfg.num_steps)
  for name in ('log_every', 'eval_every', 'checkpoint_every', 'eval_batch_size',
               'beta.step_size', 'checkpoint.max_to_keep'):
    obj = cfg
    for part in name.split('.'):
      obj = getattr(obj, part)
    _positive_int(name, obj)
  _positive_int('lr_decay_every', cfg.lr_decay_every, 0)
  _require(cfg.learning_rate > 0, f'learning_rate={cfg.learning_rate!r} must be > 0')
  _require(0 < cfg.lr_decay_factor <= 1,
           f'lr_decay_factor={cfg.lr_decay_factor!r} must be in (0, 1]')
  _require(cfg.map_topk is None or (isinstance(cfg.map_topk, int) and cfg.map_topk > 0),
           f'map_topk={cfg.map_topk!r} must be a positive integer or None (whole database)')
  _require(cfg.image_size is None or (isinstance(cfg.image_size, int) and cfg.image_size >= 8),
           f'image_size={cfg.image_size!r} must be an integer ≥ 8 or None (native size)')
  _require(cfg.loss.alpha is None or cfg.loss.alpha > 0,
           f'loss.alpha={cfg.loss.alpha!r} must be > 0 or None (10 / bits)')
  _require(cfg.checkpoint.max_bytes is None or cfg.checkpoint.max_bytes > 0,
           f'checkpoint.max_bytes={cfg.checkpoint.max_bytes!r} must be > 0 or None (no budget)')
  if cfg.pretrained is not None:
    _require(cfg.backbone in PRETRAINED_BACKBONES,
             f'pretrained weights need backbone in {", ".join(PRETRAINED_BACKBONES)}; '
             f'got backbone={cfg.backbone!r}')
    _require(isinstance(cfg.pretrained, str) and os.path.isfile(cfg.pretrained),
             f'pretrained={cfg.pretrained!r} is not a file; give a .npz or .safetensors '
             'state dict with torchvision names (python -m hashjax.pretrained convert)')
  _check_increments(cfg)
  if cfg.loss.weighting == 'fixed':
    _require(cfg.loss.class_num is not None and cfg.loss.class_num > 0,
             f"loss.weighting='fixed' needs loss.class_num > 0, got {cfg.loss.class_num!r}")
  return cfg


def _check_augment(a: AugmentConfig) -> None:
  for name, value, low, high in (('crop', a.crop, 0.0, 1.0), ('cutout', a.cutout, 0.0, 1.0),
                                 ('contrast', a.contrast, 0.0, 1.0)):
    _require(low <= value < high, f'augment.{name}={value!r} must be in [{low:g}, {high:g})')
  for name in ('rotate', 'brightness', 'noise'):
    value = getattr(a, name)
    _require(value >= 0, f'augment.{name}={value!r} must be ≥ 0 (0: off)')


def _check_increments(cfg: HashConfig) -> None:
  s, u = cfg.split, cfg.updating
  _one_of('split.stage', s.stage, STAGES)
  _require(0.0 <= s.later_fraction < 1.0,
           f'split.later_fraction={s.later_fraction!r} must be in [0, 1)')
  _require(not (s.new_classes and s.later_fraction),
           'set one of split.new_classes (class-incremental) and split.later_fraction '
           '(sample-incremental), not both')
  _require(s.stage == 'all' or bool(s.new_classes or s.later_fraction),
           f"split.stage={s.stage!r} needs split.new_classes or split.later_fraction")
  _one_of('updating.prior', u.prior, PRIORS)
  _one_of('updating.database_codes', u.database_codes, DATABASE_CODES)
  for name in ('prior_weight', 'code_anchor_weight'):
    value = getattr(u, name)
    _require(isinstance(value, (int, float)) and value >= 0,
             f'updating.{name}={value!r} must be a number ≥ 0')
  _positive_int('updating.replay_per_class', u.replay_per_class, 0)
  if u.from_workdir is not None:
    _require(s.stage != 'old', "an update trains on split.stage='new' or 'all', not 'old'")


GAN_LOSSES = ('non_saturating', 'minimax')
GAN_MODELS = ('dcgan', 'mlp')
TOY_DATASETS = ('ring8', 'grid25')  # 2-D mixtures (hashjax.toy2d), for model='mlp'


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
  labels: str | None = None  # a label table (hashjax.label_table) for a folder: dataset
  unlabelled: str = 'drop'  # images without a row in `labels`: 'drop' or 'keep' (unknown)
  collapse_window: int = 5  # logged steps of D winning outright before a warning; 0: never
  classifier_steps: int = 0  # > 0: train an attribute classifier, score samples at each eval


def gan_config(config) -> GanConfig:
  """Validates a GAN ConfigDict (or plain dict) and returns a frozen `GanConfig`."""
  values = dict(config.to_dict() if hasattr(config, 'to_dict') else config)
  values['checkpoint'] = _build(CheckpointConfig, dict(values.get('checkpoint') or {}),
                                prefix='checkpoint.')
  cfg = _build(GanConfig, values)
  _one_of('image_size', cfg.image_size, (32, 64))
  _one_of('gan_loss', cfg.gan_loss, GAN_LOSSES)
  for name in ('nz', 'ngf', 'ndf', 'num_steps', 'n_critic', 'log_every', 'eval_every',
               'checkpoint_every', 'sample_every', 'num_samples'):
    _positive_int(name, getattr(cfg, name))
  _positive_int('batch_size', cfg.batch_size, 2)
  _require(cfg.learning_rate > 0, f'learning_rate={cfg.learning_rate!r} must be > 0')
  for name in ('beta1', 'beta2', 'ema_decay'):
    _require(0 <= getattr(cfg, name) < 1, f'{name}={getattr(cfg, name)!r} must be in [0, 1)')
  _require(0 <= cfg.label_smoothing < 1,
           f'label_smoothing={cfg.label_smoothing!r} must be in [0, 1)')
  _one_of('model', cfg.model, GAN_MODELS)
  _positive_int('eval_holdout', cfg.eval_holdout, 0)
  _positive_int('eval_steps', cfg.eval_steps)
  _require(cfg.eval_holdout == 0 or cfg.eval_holdout >= 16,
           f'eval_holdout={cfg.eval_holdout} must be 0 (no JSD estimate) or ≥ 16')
  toy = cfg.dataset in TOY_DATASETS
  _require(toy == (cfg.model == 'mlp'),
           f"model={cfg.model!r} does not fit dataset={cfg.dataset!r}: model='mlp' trains on "
           f"the 2-D datasets {', '.join(TOY_DATASETS)}, model='dcgan' on images")
  _require(not (toy and cfg.conditional), f'conditional=True needs classes; {cfg.dataset} has none')
  _require(cfg.labels is None or cfg.dataset.startswith('folder:'),
           f'labels={cfg.labels!r} is a label table for a folder: dataset, not '
           f'dataset={cfg.dataset!r}')
  _one_of('unlabelled', cfg.unlabelled, ('drop', 'keep'))
  _positive_int('collapse_window', cfg.collapse_window, 0)
  _positive_int('classifier_steps', cfg.classifier_steps, 0)
  _require(not cfg.classifier_steps or (cfg.labels is not None and cfg.conditional),
           f'classifier_steps={cfg.classifier_steps} scores an attribute-conditioned GAN: it '
           'needs labels=FILE.csv and conditional=True')
  return cfg
