"""The HashNet training loop: pure jitted train step, evaluation, checkpoints and outputs.

Files written to the workdir: `config.json`, `metrics.jsonl` (one JSON object per log step),
`eval.json` (final retrieval metrics), `codes.npz` (packed codes and labels) and
`checkpoints/<step>/`. Rerunning on the same workdir resumes from the newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
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

from hashjax import codes as codes_lib
from hashjax import data as data_lib
from hashjax import losses, metrics, parallel, pretrained, schedules, training
from hashjax.checkpoint import Checkpointer, PreemptionGuard, write_or_warn
from hashjax.config import ConfigError, HashConfig, hash_config
from hashjax.models import HashNet, conv, hash_activation

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


def _init_state(cfg: HashConfig, image_shape: tuple[int, ...], rng: jax.Array) -> TrainState:
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
  mesh = mesh or parallel.make_mesh()
  init = jax.jit(functools.partial(_init_state, cfg, image_shape),
                 out_shardings=parallel.replicated(mesh))
  return init(parallel.replicate(rng, mesh))


def make_loss_fn(cfg: HashConfig) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(h_BxK, labels) → scalar loss, with the configured loss and its settings bound."""
  if cfg.loss.name == 'dhn':
    return functools.partial(losses.dhn_loss, alpha=cfg.alpha,
                             quantization_weight=cfg.loss.quantization_weight)
  return functools.partial(losses.hashnet_loss, alpha=cfg.alpha, weighting=cfg.loss.weighting,
                           class_num=cfg.loss.class_num)


def make_beta_fn(cfg: HashConfig) -> schedules.BetaSchedule:
  b = cfg.beta
  if b.schedule == 'constant':
    return schedules.make_beta_schedule('constant', beta0=b.beta0)
  return schedules.make_beta_schedule('hashnet', beta0=b.beta0, gamma=b.gamma, power=b.power,
                                      step_size=b.step_size)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               loss_fn, beta_fn, lr_fn) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: the train state. batch: {'image': float32 [B, H, W, C], 'label': [B] or [B, L]}.
    rng: the run's base PRNG key; this step uses fold_in(rng, state.step) for dropout.
    loss_fn, beta_fn, lr_fn: bound by `functools.partial` before jitting.

  Returns:
    (new state, metrics): loss (nats per pair), beta, lr, saturation = fraction of |h| > 0.99.
  """
  beta = beta_fn(state.step)
  dropout_rng = jax.random.fold_in(rng, state.step)

  def objective(params):
    z_BxK, updates = state.apply_fn(state.variables(params), batch['image'], train=True,
                                    rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    h_BxK = hash_activation(z_BxK, beta)
    return loss_fn(h_BxK, batch['label']), (h_BxK, updates)

  (loss, (h_BxK, updates)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
      batch_stats=updates.get('batch_stats', state.batch_stats), opt_state=opt_state)
  out = {'loss': loss, 'beta': beta, 'lr': lr_fn(state.step),
         'saturation': jnp.mean((jnp.abs(h_BxK) > 0.99).astype(jnp.float32))}
  return new_state, out


def make_train_step(cfg: HashConfig, mesh: Mesh | None = None):
  """The jitted train step over the mesh: batch sharded on 'data', state and RNG key
  replicated, state donated. β and the learning rate are traced, so they change without
  recompiling; XLA inserts the gathers that give the loss every pair of the global batch.
  On CPU it is compiled with Eigen's convolutions (`conv.cpu_compiler_options`)."""
  mesh = mesh or parallel.make_mesh()
  step = functools.partial(train_step, loss_fn=make_loss_fn(cfg), beta_fn=make_beta_fn(cfg),
                           lr_fn=learning_rate_schedule(cfg))
  repl, rows = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(step, in_shardings=(repl, rows, repl), out_shardings=(repl, repl),
                 donate_argnums=0, compiler_options=conv.cpu_compiler_options())


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
             split: data_lib.Split, mesh: Mesh | None = None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Encodes queries and database, binarises with sign, and scores Hamming retrieval.

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
  q_labels, db_labels = source.labels[split.query], source.labels[split.database]
  # One pass over the distances gives every number: AP under each tie order and the
  # precision–recall curve over Hamming radii.
  report = metrics.retrieval_report(query_codes, db_codes, q_labels, db_labels,
                                    topks=(cfg.map_topk,), ties=metrics.TIES, pr_curve=True)
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


def _checkpoint_tree(state: TrainState, rng: jax.Array, step: int, cfg: HashConfig
                     ) -> dict[str, Any]:
  """What a checkpoint holds: the train state (step, params, batch_stats, optimizer state),
  the RNG key, and the data position (examples seen; batches and β are functions of
  (seed, step), so this restores them exactly). `step` is passed in, not read from the
  device, so saving does not wait for the step in flight."""
  return {'state': state, 'rng': rng,
          'examples_seen': np.asarray(step * cfg.batch_size, np.int64)}


def _restore_or_init(cfg: HashConfig, ckpt: Checkpointer, image_shape, workdir,
                     mesh: Mesh | None = None) -> tuple[TrainState, jax.Array]:
  mesh = mesh or parallel.make_mesh()
  init_rng, step_rng = np.asarray(jax.random.split(jax.random.PRNGKey(cfg.seed)))
  state = create_train_state(cfg, image_shape, init_rng, mesh)
  step_rng = parallel.replicate(step_rng, mesh)
  latest = ckpt.latest_step()
  if latest is None:
    if cfg.pretrained:  # a fresh run starts from the given backbone weights
      variables = pretrained.load_pretrained(state.variables(), cfg.pretrained, cfg.backbone)
      variables = jax.device_put(variables, parallel.replicated(mesh))
      state = state.replace(params=variables['params'],
                            batch_stats=variables.get('batch_stats', state.batch_stats))
      log.info('backbone weights loaded from %s', cfg.pretrained)
    return state, step_rng
  restored = ckpt.restore(latest, _checkpoint_tree(state, step_rng, 0, cfg))
  state, step_rng = restored['state'], restored['rng']
  seen, step = int(restored['examples_seen']), int(restored['state'].step)
  if seen != step * cfg.batch_size:
    raise ConfigError(f'batch_size={cfg.batch_size} differs from the run in {workdir} '
                      f'({seen} examples in {step} steps); resume with its batch size or '
                      'use a new --workdir')
  log.info('resuming from checkpoint step %d in %s', step, ckpt.directory)
  return state, step_rng


def _load_data(cfg: HashConfig) -> tuple[data_lib.Source, data_lib.Split]:
  source = data_lib.load_source(cfg.dataset, image_size=cfg.image_size)
  if cfg.class_list:
    source = data_lib.restrict_classes(source, data_lib.read_class_list(cfg.class_list))
  s = cfg.split
  split = data_lib.protocol_split(
      source.labels, seed=cfg.seed, query_per_class=s.query_per_class, num_query=s.num_query,
      train_per_class=s.train_per_class, num_train=s.num_train,
      train_in_database=s.train_in_database)
  return source, split


def _global_batch(cfg: HashConfig, source, split, step: int, mesh: Mesh) -> dict[str, jax.Array]:
  """Batch `step` as global arrays; this process loads only its slice of the examples."""
  positions = data_lib.batch_indices(len(split.train), cfg.batch_size, step, cfg.seed)
  idx = split.train[positions][parallel.process_slice(cfg.batch_size)]
  local = {'image': data_lib.to_float(source.images(idx)), 'label': source.labels[idx]}
  return parallel.global_batch(local, mesh)


def train_and_evaluate(config: ml_collections.ConfigDict | HashConfig, workdir: str, *,
                       reporter: training.Reporter | None = None) -> dict[str, Any]:
  """Trains HashNet as configured, evaluating every `eval_every` steps and at the end.

  Runs data-parallel over every device (all processes' devices after
  `parallel.initialize_distributed`); `batch_size` is global. Only process 0 writes
  config.json, metrics.jsonl, eval.json and codes.npz; checkpoints are written collectively.

  Args:
    config: a hashing ConfigDict (see configs/) or a validated `HashConfig`.
    workdir: output directory; an existing checkpoint there is resumed.
    reporter: receives progress on process 0 (None: silent).

  Returns:
    The final evaluation results (also written to `<workdir>/eval.json`), or, when SIGTERM
    or SIGINT stopped the run, {'preempted_at_step': step, 'signal': name} after a checkpoint
    of that step was written.
  """
  cfg = config if isinstance(config, HashConfig) else hash_config(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(cfg.batch_size, mesh)
  main = parallel.is_main_process()
  reporter = reporter if reporter is not None and main else training.SilentReporter()
  os.makedirs(workdir, exist_ok=True)
  if main:
    training.write_json(os.path.join(workdir, 'config.json'), _config_dict(config))

  source, split = _load_data(cfg)
  image_shape = source.images(split.train[:1]).shape[1:]
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'),
                      max_to_keep=cfg.checkpoint.max_to_keep, max_bytes=cfg.checkpoint.max_bytes,
                      best_metric=cfg.checkpoint.best_metric,
                      async_save=cfg.checkpoint.async_save)
  state, step_rng = _restore_or_init(cfg, ckpt, image_shape, workdir, mesh)
  first_step = int(state.step)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if main:
    training.truncate_metrics(metrics_path, first_step)
  metrics_log = training.MetricsLog(metrics_path, reporter, ckpt.stats.as_dict)

  step_fn = make_train_step(cfg, mesh)
  reporter.start(cfg.num_steps, first_step)
  last_time, last_step = time.perf_counter(), first_step
  step_metrics = None
  with PreemptionGuard(ckpt) as guard:
    batches = training.prefetch(lambda t: _global_batch(cfg, source, split, t, mesh),
                                range(first_step, cfg.num_steps))
    for step, batch in zip(range(first_step, cfg.num_steps), batches):
      previous = step_metrics
      if step == first_step:
        compile_start = time.perf_counter()
        state, step_metrics = step_fn(state, batch, step_rng)  # compiles synchronously
        log.info('compiled the train step in %.1f s', time.perf_counter() - compile_start)
      else:
        state, step_metrics = step_fn(state, batch, step_rng)
      # At most two steps in flight: the device never idles, and XLA:CPU's collectives over
      # many simulated devices cannot starve (their rendezvous times out with a deep queue).
      jax.block_until_ready(previous)
      metrics_log.flush()
      done = step + 1
      if done % cfg.log_every == 0 or done == cfg.num_steps:
        now = time.perf_counter()
        metrics_log.push(done, step_metrics, (done - last_step) * cfg.batch_size / (now - last_time))
        last_time, last_step = now, done
      eval_results = None
      if done % cfg.eval_every == 0 and done != cfg.num_steps:
        eval_results = evaluate(state, cfg, source, split, mesh)[0]
        reporter.evaluated(eval_results)
      if done == cfg.num_steps:
        break
      if guard.should_stop(done):
        metrics_log.flush()
        ckpt.save(done, _checkpoint_tree(state, step_rng, done, cfg), final=True)
        ckpt.close()
        reporter.close()
        log.warning('%s received: saved step %d in %s; rerun to resume', guard.signal_name,
                    done, ckpt.directory)
        return {'preempted_at_step': done, 'signal': guard.signal_name}
      if done % cfg.checkpoint_every == 0:
        ckpt.save(done, _checkpoint_tree(state, step_rng, done, cfg), metrics=eval_results)
  metrics_log.flush()
  results, codes = evaluate(state, cfg, source, split, mesh)
  ckpt.save(results['step'], _checkpoint_tree(state, step_rng, results['step'], cfg),
            metrics=results, final=True)
  ckpt.close()
  if main:
    training.write_json(os.path.join(workdir, 'eval.json'), results)
    _save_codes(os.path.join(workdir, 'codes.npz'), cfg, source, split, codes)
  reporter.evaluated(results)
  reporter.close()
  return results


def _config_dict(config) -> dict[str, Any]:
  if isinstance(config, HashConfig):
    return dataclasses.asdict(config)
  return config.to_dict()
