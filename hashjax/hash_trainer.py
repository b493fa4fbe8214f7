"""The HashNet job: its train state, pure train step, evaluation and outputs, run by
`hashjax.loop`.

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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from hashjax import augment
from hashjax import codes as codes_lib
from hashjax import data as data_lib
from hashjax import disk, extra_eval, increments, loop, losses, metrics, parallel, pretrained
from hashjax import schedules
from hashjax import priors, training
from hashjax.disk import write_or_warn
from hashjax.config import HashConfig, hash_config
from hashjax.models import HashNet, hash_activation

log = logging.getLogger(__name__)


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
               loss_fn, beta_fn, lr_fn, views_fn=None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: the train state. batch: {'image': float32 [B, H, W, C], 'label': [B] or [B, L]}.
    rng: the run's base PRNG key; this step uses fold_in(rng, state.step) for dropout.
    loss_fn, beta_fn, lr_fn: bound by `functools.partial` before jitting.
    views_fn: label-free training: (key, images [B, ...]) → (2B views, view ids [2B]), the
      loss then sees the views with their ids as labels (None: the batch as it is).

  Returns:
    (new state, metrics): loss (nats per pair), beta, lr, saturation = fraction of |h| > 0.99.
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
    return loss_fn(h_BxK, labels), (h_BxK, updates)

  (loss, (h_BxK, updates)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
      batch_stats=updates.get('batch_stats', state.batch_stats), opt_state=opt_state)
  out = {'loss': loss, 'beta': beta, 'lr': lr_fn(state.step),
         'saturation': jnp.mean((jnp.abs(h_BxK) > 0.99).astype(jnp.float32))}
  return new_state, out


def bound_train_step(cfg: HashConfig):
  """`train_step` with the configured loss, β schedule and learning rate bound (unjitted)."""
  views_fn = (functools.partial(augment.views, strengths=cfg.augment)
              if cfg.loss.similarity == 'views' else None)
  return functools.partial(train_step, loss_fn=make_loss_fn(cfg), beta_fn=make_beta_fn(cfg),
                           lr_fn=learning_rate_schedule(cfg), views_fn=views_fn)


def make_train_step(cfg: HashConfig, mesh: Mesh | None = None):
  """The jitted train step over the mesh (`loop.jit_train_step`): batch sharded on 'data',
  state and RNG key replicated, state donated. β and the learning rate are traced, so they
  change without recompiling; XLA inserts the gathers that give the loss every pair of the
  global batch."""
  return loop.jit_train_step(bound_train_step(cfg), mesh or parallel.make_mesh())


@functools.lru_cache(maxsize=None)
def _encode_fn(mesh: Mesh):
  def encode_batch(state, images):
    return state.apply_fn(state.variables(), images, train=False)
  repl = parallel.replicated(mesh)
  return jax.jit(encode_batch, in_shardings=(repl, parallel.data_sharding(mesh)),
                 out_shardings=repl)


def encode(state: TrainState, source: data_lib.Source, indices: np.ndarray, batch_size: int,
           mesh: Mesh | None = None) -> np.ndarray:
  """Hash-layer outputs z [len(indices), bits] (float32) for source items.

  Batches (rounded up to a multiple of the devices) are sharded over the mesh's data axis;
  each process loads only its slice of every batch, and every process gets all outputs.
  """
  mesh = mesh or parallel.make_mesh()
  unit = mesh.shape[parallel.DATA] * jax.process_count()
  batch_size = -(-batch_size // unit) * unit
  encode_batch = _encode_fn(mesh)
  mine = parallel.process_slice(batch_size)
  out = []
  for start in range(0, len(indices), batch_size):
    chunk = indices[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk))])
    images = parallel.global_batch({'image': data_lib.to_float(source.images(padded[mine]))},
                                   mesh)['image']
    out.append(parallel.to_host(encode_batch(state, images))[:len(chunk)])
  return np.concatenate(out)


def evaluate(state: TrainState, cfg: HashConfig, source: data_lib.Source,
             split: data_lib.Split, mesh: Mesh | None = None, extra_cache: dict | None = None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Encodes queries and database, binarises with sign, and scores Hamming retrieval
  (and `cfg.eval_extra`'s metrics; `extra_cache`: see `extra_eval.evaluate_extra`).

  Returns:
    (results, codes): results has map (at cfg.map_topk, ties by index), map_interval
    ([worst, best] over the orders of tied items), map_expected (uniformly random tie order),
    precision_at_radius_2, recall_at_radius_2, ...; codes holds the ±1 query and database
    codes.
  """
  query_codes = np.asarray(codes_lib.sign_codes(
      encode(state, source, split.query, cfg.eval_batch_size, mesh)))
  db_codes = np.asarray(codes_lib.sign_codes(
      encode(state, source, split.database, cfg.eval_batch_size, mesh)))
  query_labels, db_labels = source.labels[split.query], source.labels[split.database]
  # One pass over the distances gives every number: AP under each tie order and the
  # precision–recall curve over Hamming radii.
  report = metrics.retrieval_report(query_codes, db_codes, query_labels, db_labels,
                                    map_topks=(cfg.map_topk,), ties=metrics.TIES,
                                    pr_curve=True)
  name = 'all' if cfg.map_topk is None else cfg.map_topk
  results = {
      'step': int(state.step),
      'map': report[f'map@{name}'],
      'map_interval': [report[f'map@{name}_worst'], report[f'map@{name}_best']],
      'map_expected': report[f'map@{name}_expected'],
      'map_topk': cfg.map_topk,
      'precision_at_radius_2': report['pr_precision'][min(2, cfg.bits)],
      'recall_at_radius_2': report['pr_recall'][min(2, cfg.bits)],
      'bits': cfg.bits,
      'num_query': len(split.query),
      'num_database': len(split.database),
  }
  extra = extra_eval.parse(cfg.eval_extra)
  if extra:
    encode_fn = lambda src, indices: encode(state, src, indices, cfg.eval_batch_size, mesh)
    results.update(extra_eval.evaluate_extra(extra, encode_fn, source, split, query_codes,
                                             db_codes, topk=cfg.map_topk, seed=cfg.seed,
                                             cache=extra_cache))
  return results, {'query': query_codes, 'database': db_codes}


def _save_codes(path: str, cfg: HashConfig, source, split, codes) -> bool:
  def write(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, db_codes=codes_lib.pack_codes(codes['database']),
               db_labels=source.labels[split.database], db_indices=split.database,
               query_codes=codes_lib.pack_codes(codes['query']),
               query_labels=source.labels[split.query], query_indices=split.query,
               bits=np.int64(cfg.bits), dataset=np.str_(cfg.dataset))
  return write_or_warn(path, write)


def load_data(cfg: HashConfig) -> tuple[data_lib.Source, data_lib.Split]:
  """The data source (restricted to `class_list`) and the query / database / train split of
  the run's stage (`split.stage`, hashjax.increments; 'all' by default)."""
  source, _, split, _ = load_incremental(cfg)
  return source, split


def load_incremental(cfg: HashConfig) -> tuple[data_lib.Source, data_lib.Split,
                                               data_lib.Split, np.ndarray]:
  """(source, full split, the stage's split, arrives-later mask bool [N]); see
  `hashjax.increments`."""
  source = data_lib.load_source(cfg.dataset, image_size=cfg.image_size)
  if 'ndcg' in extra_eval.parse(cfg.eval_extra) and source.labels.ndim != 2:
    raise data_lib.DataError(f"eval_extra 'ndcg' grades relevance by shared labels and needs "
                             f'multi-hot labels; {cfg.dataset} has class ids')
  if cfg.loss.similarity == 'soft' and source.labels.ndim != 2:
    raise data_lib.DataError(f"loss.similarity='soft' needs multi-hot labels; {cfg.dataset} "
                             "has class ids (use loss.similarity='hard', or a multi-label set "
                             "such as mosaic:npz:mnist_t10k.npz)")
  if cfg.class_list:
    source = data_lib.restrict_classes(source, data_lib.read_class_list(cfg.class_list))
  full, split, later = increments.incremental_split(
      source.labels, cfg.split, cfg.seed, replay_per_class=cfg.updating.replay_per_class)
  return source, full, split, later


def _examples(source: data_lib.Source, split: data_lib.Split, positions: np.ndarray
              ) -> dict[str, np.ndarray]:
  idx = split.train[positions]
  return {'image': data_lib.to_float(source.images(idx)), 'label': source.labels[idx]}


def global_batch(cfg: HashConfig, source: data_lib.Source, split: data_lib.Split, step: int,
                 mesh: Mesh) -> dict[str, jax.Array]:
  """Training batch `step` as global arrays ({'image': [B, H, W, C], 'label': [B] or
  [B, L]}); this process loads only its slice of the examples."""
  return loop.global_batch(functools.partial(_examples, source, split), len(split.train),
                           cfg.batch_size, cfg.seed, step, mesh)


class HashJob(loop.Job):
  """HashNet as a job of `hashjax.loop`: the state is a `TrainState`; evaluation encodes
  queries and database and scores Hamming retrieval (`evaluate`); the outputs are eval.json
  and codes.npz (packed codes and labels of the final evaluation)."""
  loss_keys = ('loss',)
  metric_modes = {'map': 'max', 'map_expected': 'max', 'precision_at_radius_2': 'max',
                  'recall_at_radius_2': 'max'}
  eval_at_start = False
  resumable = frozenset({'learning_rate', 'lr_decay_every', 'lr_decay_factor', 'map_topk',
                         'eval_batch_size', 'pretrained', 'save_fisher', 'eval_extra'})
  # Settings added after older runs were made (the update issue's, loss.similarity): a run
  # from before them had these values.
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
    self.source, self.split = load_data(self.cfg)
    self.extra_cache: dict = {}  # eval_extra's fixed ground truth, kept across evaluations
    self.num_examples = len(self.split.train)
    image_shape = self.source.images(self.split.train[:1]).shape[1:]
    self.init_state = functools.partial(init_state, self.cfg, image_shape)
    self.train_step = bound_train_step(self.cfg)
    self.codes: dict[str, np.ndarray] | None = None  # of the latest evaluation

  def examples(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    return _examples(self.source, self.split, positions)

  def start(self, state: TrainState, first_step: int) -> TrainState:
    """A fresh run starts from the configured pretrained backbone weights, if any."""
    if first_step > 0 or not self.cfg.pretrained:
      return state
    variables = pretrained.load_pretrained(state.variables(), self.cfg.pretrained,
                                           self.cfg.backbone)
    variables = jax.device_put(variables, parallel.replicated(parallel.make_mesh()))
    log.info('backbone weights loaded from %s', self.cfg.pretrained)
    return state.replace(params=variables['params'],
                         batch_stats=variables.get('batch_stats', state.batch_stats))

  def evaluate(self, state: TrainState, step: int) -> dict[str, Any]:
    del step  # the state knows it
    results, self.codes = evaluate(state, self.cfg, self.source, self.split,
                                   extra_cache=self.extra_cache)
    return results

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


def save_fisher(state: TrainState, cfg: HashConfig, source: data_lib.Source,
                split: data_lib.Split, path: str) -> bool:
  """Computes the diagonal Fisher of the model in `state` on the split's training images
  (`priors.fisher_diagonal`, batches of cfg.batch_size, β of the state's step) and writes it
  to `path` (process 0; a full disk: a warning and False)."""
  def batches():
    for start in range(0, len(split.train), cfg.batch_size):
      idx = split.train[start:start + cfg.batch_size]
      yield {'image': data_lib.to_float(source.images(idx)), 'label': source.labels[idx]}
  step = int(state.step)
  beta = float(make_beta_fn(cfg)(step))
  variables = jax.device_get(state.variables())
  fisher = priors.fisher_diagonal(state.apply_fn, variables, batches(), beta=beta,
                                  alpha=cfg.alpha)
  log.info('diagonal Fisher of step %d (β=%.3g) on %d training images', step, beta,
           len(split.train))
  if not parallel.is_main_process():
    return True
  return priors.save_fisher(path, jax.device_get(fisher), step=step, beta=beta,
                            write=write_or_warn)


def train_and_evaluate(config: ml_collections.ConfigDict | HashConfig, workdir: str, *,
                       reporter: training.Reporter | None = None) -> dict[str, Any]:
  """Trains HashNet as configured (`hashjax.loop.run` over a `HashJob`), evaluating every
  `eval_every` steps and at the end.

  Runs data-parallel over every device (all processes' devices after
  `parallel.initialize_distributed`); `batch_size` is global.

  Args:
    config: a hashing ConfigDict (see configs/) or a validated `HashConfig`.
    workdir: output directory; an existing checkpoint there is resumed.
    reporter: receives progress on process 0 (None: silent).

  Returns:
    The final evaluation results (also `<workdir>/eval.json`), or, when SIGTERM or SIGINT
    stopped the run, {'preempted_at_step': step, 'signal': name} after a checkpoint of that
    step was written. With `updating.from_workdir` set, the run is an update of that finished
    run (`hashjax.update.UpdateJob`).
  """
  if hash_config(config).updating.from_workdir is not None:
    from hashjax import update  # pylint: disable=g-import-not-at-top  # it builds on this module
    return loop.run(update.UpdateJob, config, workdir, reporter=reporter)
  return loop.run(HashJob, config, workdir, reporter=reporter)
