"""The HashNet job of `hashjax.runtime.loop`: its data, its step (`hashing.step`), its
evaluation (`hashing.evaluation`) and its outputs.

Files written to the workdir: `config.json`, `metrics.jsonl` (one JSON object per log step),
`eval.jsonl` (every evaluation), `eval.json` (final retrieval metrics), `codes.npz` (packed
codes and labels) and `checkpoints/<step>/`. Rerunning on the same workdir resumes from the
newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from hashjax.data import base as data_base
from hashjax.data import manifest, sources
from hashjax.data.base import Source
from hashjax.data.split import Split
from hashjax.hashing import augment, evaluation, increments, pretrained, priors
from hashjax.hashing import step as step_lib
from hashjax.hashing.config import HashConfig, hash_config, parse_eval_extra
from hashjax.retrieval import codes as codes_lib
from hashjax.retrieval.metrics import metric_key
from hashjax.runtime import disk, loop, parallel
from hashjax.runtime.disk import write_or_warn
from hashjax.runtime.errors import DataError

log = logging.getLogger(__name__)


def _save_codes(path: str, cfg: HashConfig, source, split, codes) -> bool:
  def write(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, db_codes=codes_lib.pack_codes(codes['database']),
               db_labels=source.labels[split.database], db_indices=split.database,
               query_codes=codes_lib.pack_codes(codes['query']),
               query_labels=source.labels[split.query], query_indices=split.query,
               bits=np.int64(cfg.bits), dataset=np.str_(cfg.dataset))
  return write_or_warn(path, write)


def load_data(cfg: HashConfig) -> tuple[Source, Split]:
  """The data source (restricted to `class_list`) and the query / database / train split of
  the run's stage (`split.stage`, hashing.increments; 'all' by default)."""
  source, _, split, _ = load_incremental(cfg)
  return source, split


def load_incremental(cfg: HashConfig) -> tuple[Source, Split,
                                               Split, np.ndarray]:
  """(source, full split, the stage's split, arrives-later mask bool [N]); see
  `hashing.increments`."""
  source = sources.load_source(cfg.dataset, image_size=cfg.image_size)
  if 'ndcg' in parse_eval_extra(cfg.eval_extra) and source.labels.ndim != 2:
    raise DataError(f"eval_extra 'ndcg' grades relevance by shared labels and needs "
                             f'multi-hot labels; {cfg.dataset} has class ids')
  if cfg.loss.similarity == 'soft' and source.labels.ndim != 2:
    raise DataError(f"loss.similarity='soft' needs multi-hot labels; {cfg.dataset} "
                             "has class ids (use loss.similarity='hard', or a multi-label set "
                             "such as mosaic:npz:mnist_t10k.npz)")
  if cfg.class_list:
    source = data_base.restrict_classes(source, data_base.read_class_list(cfg.class_list))
  full, split, later = increments.incremental_split(
      source.labels, cfg.split, cfg.seed, replay_per_class=cfg.updating.replay_per_class)
  return source, full, split, later


def _examples(source: Source, split: Split, positions: np.ndarray
              ) -> dict[str, np.ndarray]:
  idx = split.train[positions]
  return {'image': data_base.to_float(source.images(idx)), 'label': source.labels[idx]}


def global_batch(cfg: HashConfig, source: Source, split: Split, step: int,
                 mesh: Mesh) -> dict[str, jax.Array]:
  """Training batch `step` as global arrays ({'image': [B, H, W, C], 'label': [B] or
  [B, L]}); this process loads only its slice of the examples."""
  return loop.global_batch(functools.partial(_examples, source, split), len(split.train),
                           cfg.batch_size, cfg.seed, step, mesh)


class HashJob(loop.Job):
  """HashNet as a job of `runtime.loop`: the state is a `step.TrainState`; evaluation
  encodes queries and database and scores Hamming retrieval (`evaluation.evaluate`); the
  outputs are eval.json and codes.npz (packed codes and labels of the final evaluation)."""
  loss_keys = ('loss',)
  eval_at_start = False
  resumable = frozenset({'learning_rate', 'lr_decay_every', 'lr_decay_factor', 'map_topk',
                         'eval_batch_size', 'pretrained', 'save_fisher', 'eval_extra'})
  # Settings added after older runs were made (the incremental protocols, updating, the
  # similarity, views, eval_extra): a run from before them had these values.
  added_settings = {
      'split.new_classes': None, 'split.later_fraction': 0.0, 'split.stage': 'all',
      'split.validation': False, 'updating.from_workdir': None, 'updating.prior': 'laplace',
      'updating.prior_weight': 1.0, 'updating.database_codes': 'reencode',
      'updating.code_anchor_weight': 0.0, 'updating.replay_per_class': 0, 'save_fisher': False,
      'loss.similarity': 'hard', 'eval_extra': '',
      **{f'augment.{k}': v for k, v in dataclasses.asdict(augment.Strengths()).items()}}

  def __init__(self, config: ml_collections.ConfigDict | HashConfig, workdir: str):
    self.cfg = config if isinstance(config, HashConfig) else hash_config(config)
    self.config, self.workdir = config, workdir
    topk = self.cfg.map_topk
    self.metric_modes = {metric_key('map', topk): 'max',
                         metric_key('map', topk, 'expected'): 'max',
                         f'precision@radius{evaluation.RADIUS}': 'max',
                         f'recall@radius{evaluation.RADIUS}': 'max'}
    self.source, self.split = load_data(self.cfg)
    self.extra_cache: dict = {}  # eval_extra's fixed ground truth, kept across evaluations
    self.num_examples = len(self.split.train)
    image_shape = self.source.images(self.split.train[:1]).shape[1:]
    self.init_state = functools.partial(step_lib.init_state, self.cfg, image_shape)
    self.train_step = step_lib.bound_train_step(self.cfg)
    self.codes: dict[str, np.ndarray] | None = None  # of the latest evaluation

  def examples(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    return _examples(self.source, self.split, positions)

  def start(self, state: step_lib.TrainState, first_step: int) -> step_lib.TrainState:
    """A fresh run starts from the configured pretrained backbone weights, if any."""
    if first_step > 0 or not self.cfg.pretrained:
      return state
    variables = pretrained.load_pretrained(state.variables(), self.cfg.pretrained,
                                           self.cfg.backbone)
    variables = jax.device_put(variables, parallel.replicated(parallel.make_mesh()))
    log.info('backbone weights loaded from %s', self.cfg.pretrained)
    return state.replace(params=variables['params'],
                         batch_stats=variables.get('batch_stats', state.batch_stats))

  def evaluate(self, state: step_lib.TrainState, step: int) -> dict[str, Any]:
    del step  # the state knows it
    results, self.codes = evaluation.evaluate(state, self.cfg, self.source, self.split,
                                              extra_cache=self.extra_cache)
    return results

  def check_data(self, resuming: bool) -> None:
    manifest.check_or_record(self.workdir, self.cfg.dataset, resuming=resuming,
                             write=parallel.is_main_process())

  def upgrade_row(self, row: dict[str, Any]) -> dict[str, Any]:
    return evaluation.upgrade_row(row)

  def finish(self, state, eval_row, last_log_row) -> dict[str, Any]:
    del last_log_row
    path = os.path.join(self.workdir, 'codes.npz')
    if parallel.is_main_process() and not _save_codes(path, self.cfg, self.source, self.split,
                                                      self.codes):
      raise disk.OutputNotWritten(path, eval_row)
    if self.cfg.save_fisher:
      path = os.path.join(self.workdir, FISHER_FILE)
      if not save_fisher(state, self.cfg, self.source, self.split, path):
        raise disk.OutputNotWritten(path, eval_row)
    return eval_row


FISHER_FILE = 'fisher.npz'


def save_fisher(state: step_lib.TrainState, cfg: HashConfig, source: Source,
                split: Split, path: str) -> bool:
  """Computes the diagonal Fisher of the model in `state` on the split's training images
  (`priors.fisher_diagonal`, batches of cfg.batch_size, β of the state's step) and writes it
  to `path` (process 0; a full disk: a warning and False)."""
  def batches():
    for start in range(0, len(split.train), cfg.batch_size):
      idx = split.train[start:start + cfg.batch_size]
      yield {'image': data_base.to_float(source.images(idx)), 'label': source.labels[idx]}
  step = int(state.step)
  beta = float(step_lib.make_beta_fn(cfg)(step))
  variables = jax.device_get(state.variables())
  fisher = priors.fisher_diagonal(state.apply_fn, variables, batches(), beta=beta,
                                  alpha=cfg.alpha)
  log.info('diagonal Fisher of step %d (β=%.3g) on %d training images', step, beta,
           len(split.train))
  if not parallel.is_main_process():
    return True
  return priors.save_fisher(path, jax.device_get(fisher), step=step, beta=beta,
                            write=write_or_warn)


