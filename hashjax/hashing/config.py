"""Typed, validated settings of the hashing jobs, built from an ml_collections ConfigDict.

Model and training code receive these frozen dataclasses, never a ConfigDict. Every check
raises `ConfigError` with one line naming the bad value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import os

from hashjax.hashing.augment import Strengths as AugmentConfig
from hashjax.hashing.losses import SIMILARITIES as LOSS_SIMILARITIES
from hashjax.hashing.losses import WEIGHTINGS
from hashjax.hashing.pretrained import BACKBONES as PRETRAINED_BACKBONES
from hashjax.hashing.schedules import SCHEDULES
from hashjax.models.backbones import BACKBONES
from hashjax.runtime.errors import ConfigError
from hashjax.runtime.settings import (
  CheckpointConfig,
  build,
  one_of,
  positive_int,
  require,
)

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
  # Incremental protocols (hashjax.hashing.increments): which items arrive later, and which stage
  # this run sees: 'all', 'old' (before the update) or 'new' (the update's data).
  new_classes: str | None = None  # class ids arriving later, e.g. '7,8,9'
  later_fraction: float = 0.0  # or: this fraction of each class arrives later
  stage: str = 'all'
  validation: bool = False  # select settings: the test queries leave the data; see increments


# Evaluations beyond class labels (`eval_extra`, `hashing.evaluation`).
EXTRA_METRICS = ('ndcg', 'neighbours', 'copies')


def parse_eval_extra(names: str) -> tuple[str, ...]:
  """'ndcg,copies' → ('ndcg', 'copies'); '' → (). An unknown name is a `ConfigError`."""
  chosen = tuple(n.strip() for n in names.split(',') if n.strip())
  for name in chosen:
    if name not in EXTRA_METRICS:
      raise ConfigError(f'unknown eval_extra metric {name!r}; accepted: '
                        f'{", ".join(EXTRA_METRICS)}')
  return chosen


PRIORS = ('none', 'l2', 'laplace')
DATABASE_CODES = ('reencode', 'keep')
STAGES = ('all', 'old', 'new')


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
  """Updating a finished run (hashjax.hashing.update); inactive while from_workdir is None."""
  from_workdir: str | None = None
  prior: str = 'laplace'
  prior_weight: float = 1.0
  database_codes: str = 'reencode'
  code_anchor_weight: float = 0.0
  replay_per_class: int = 0


@dataclasses.dataclass(frozen=True)
class HashConfig:
  """Everything `run.train_and_evaluate` needs (see configs/hashnet_digits.py)."""
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
  eval_extra: str = ''  # comma-separated: ndcg, neighbours, copies (hashjax.hashing.evaluation)

  @property
  def alpha(self) -> float:
    """The likelihood's α: `loss.alpha`, or 10 / bits when unset."""
    return 10.0 / self.bits if self.loss.alpha is None else self.loss.alpha


def hash_config(config) -> HashConfig:
  """Validates a hashing ConfigDict (or plain dict) and returns a frozen `HashConfig`."""
  values = dict(config.to_dict() if hasattr(config, 'to_dict') else config)
  nested = {'beta': BetaConfig, 'loss': LossConfig, 'split': SplitConfig,
            'checkpoint': CheckpointConfig, 'updating': UpdateConfig, 'augment': AugmentConfig}
  for key, cls in nested.items():
    values[key] = build(cls, dict(values.get(key) or {}), prefix=f'{key}.')
  cfg = build(HashConfig, values)

  one_of('backbone', cfg.backbone, BACKBONES)
  one_of('optimizer', cfg.optimizer, OPTIMIZERS)
  one_of('loss.name', cfg.loss.name, LOSSES)
  one_of('loss.weighting', cfg.loss.weighting, WEIGHTINGS)
  one_of('loss.similarity', cfg.loss.similarity, SIMILARITIES)
  require(cfg.loss.similarity != 'soft' or cfg.loss.name == 'hashnet',
           f"loss.similarity='soft' is HashNet's; loss.name={cfg.loss.name!r} takes 'hard'")
  _check_augment(cfg.augment)
  parse_eval_extra(cfg.eval_extra)
  require(not cfg.eval_extra or cfg.updating.from_workdir is None,
           f'eval_extra={cfg.eval_extra!r} is for train.py runs; the update job '
           '(updating.from_workdir) evaluates old and new classes instead')
  one_of('beta.schedule', cfg.beta.schedule, SCHEDULES)
  one_of('compute_dtype', cfg.compute_dtype, ('float32', 'bfloat16'))
  require(isinstance(cfg.bits, int) and 8 <= cfg.bits <= 1024,
           f'bits={cfg.bits!r} is out of range; accepted: integers 8..1024')
  positive_int('batch_size', cfg.batch_size, 2)
  positive_int('num_steps', cfg.num_steps)
  for name in ('log_every', 'eval_every', 'checkpoint_every', 'eval_batch_size',
               'beta.step_size', 'checkpoint.max_to_keep'):
    obj = cfg
    for part in name.split('.'):
      obj = getattr(obj, part)
    positive_int(name, obj)
  positive_int('lr_decay_every', cfg.lr_decay_every, 0)
  require(cfg.learning_rate > 0, f'learning_rate={cfg.learning_rate!r} must be > 0')
  require(0 < cfg.lr_decay_factor <= 1,
           f'lr_decay_factor={cfg.lr_decay_factor!r} must be in (0, 1]')
  require(cfg.map_topk is None or (isinstance(cfg.map_topk, int) and cfg.map_topk > 0),
           f'map_topk={cfg.map_topk!r} must be a positive integer or None (whole database)')
  require(cfg.image_size is None or (isinstance(cfg.image_size, int) and cfg.image_size >= 8),
           f'image_size={cfg.image_size!r} must be an integer ≥ 8 or None (native size)')
  require(cfg.loss.alpha is None or cfg.loss.alpha > 0,
           f'loss.alpha={cfg.loss.alpha!r} must be > 0 or None (10 / bits)')
  require(cfg.checkpoint.max_bytes is None or cfg.checkpoint.max_bytes > 0,
           f'checkpoint.max_bytes={cfg.checkpoint.max_bytes!r} must be > 0 or None (no budget)')
  if cfg.pretrained is not None:
    require(cfg.backbone in PRETRAINED_BACKBONES,
             f'pretrained weights need backbone in {", ".join(PRETRAINED_BACKBONES)}; '
             f'got backbone={cfg.backbone!r}')
    require(isinstance(cfg.pretrained, str) and os.path.isfile(cfg.pretrained),
             f'pretrained={cfg.pretrained!r} is not a file; give a .npz or .safetensors '
             'state dict with torchvision names (python -m hashjax.commands.pretrained)')
  _check_increments(cfg)
  if cfg.loss.weighting == 'fixed':
    require(cfg.loss.class_num is not None and cfg.loss.class_num > 0,
             f"loss.weighting='fixed' needs loss.class_num > 0, got {cfg.loss.class_num!r}")
  return cfg


def _check_augment(a: AugmentConfig) -> None:
  for name, value, low, high in (('crop', a.crop, 0.0, 1.0), ('cutout', a.cutout, 0.0, 1.0),
                                 ('contrast', a.contrast, 0.0, 1.0)):
    require(low <= value < high, f'augment.{name}={value!r} must be in [{low:g}, {high:g})')
  for name in ('rotate', 'brightness', 'noise'):
    value = getattr(a, name)
    require(value >= 0, f'augment.{name}={value!r} must be ≥ 0 (0: off)')


def _check_increments(cfg: HashConfig) -> None:
  s, u = cfg.split, cfg.updating
  one_of('split.stage', s.stage, STAGES)
  require(0.0 <= s.later_fraction < 1.0,
           f'split.later_fraction={s.later_fraction!r} must be in [0, 1)')
  require(not (s.new_classes and s.later_fraction),
           'set one of split.new_classes (class-incremental) and split.later_fraction '
           '(sample-incremental), not both')
  require(s.stage == 'all' or bool(s.new_classes or s.later_fraction),
           f"split.stage={s.stage!r} needs split.new_classes or split.later_fraction")
  one_of('updating.prior', u.prior, PRIORS)
  one_of('updating.database_codes', u.database_codes, DATABASE_CODES)
  for name in ('prior_weight', 'code_anchor_weight'):
    value = getattr(u, name)
    require(isinstance(value, (int, float)) and 0 <= value < math.inf,
             f'updating.{name}={value!r} must be a finite number ≥ 0')
  positive_int('updating.replay_per_class', u.replay_per_class, 0)
  if u.from_workdir is not None:
    require(s.stage != 'old', "an update trains on split.stage='new' or 'all', not 'old'")


