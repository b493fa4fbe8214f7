"""One cell of a hashing grid: train a `HashConfig` with the trainer's own pieces (its state,
jitted step and batches; no workdir, no checkpoints), recording held-out pairwise losses on
the way, and score retrieval with sign codes, continuous codes or a shallow baseline.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hashjax.data import base as data_base
from hashjax.data.base import Source
from hashjax.data.split import Split
from hashjax.hashing import baselines, encoding, job, losses
from hashjax.hashing import step as step_lib
from hashjax.hashing.config import HashConfig
from hashjax.models import hash_activation
from hashjax.retrieval import codes as codes_lib
from hashjax.retrieval import metrics
from hashjax.runtime import parallel

HELDOUT = 256  # images of the fixed held-out batch for the loss curves
SHALLOW = ('lsh', 'itq')


def heldout_indices(split: Split, seed: int, size: int = HELDOUT) -> np.ndarray:
  """A fixed batch (sorted int64 [size]) of database items outside the training set."""
  rest = np.setdiff1d(split.database, split.train)
  rng = np.random.default_rng([seed, 0x4E1D])
  return np.sort(rng.choice(rest, min(size, len(rest)), replace=False))


def heldout_losses(z_NxK: jax.Array, labels: jax.Array, beta, alpha: float
                   ) -> tuple[jax.Array, jax.Array]:
  """Unweighted pairwise NLL (nats per pair, all ordered pairs i ≠ j) of a held-out batch with
  the continuous codes tanh(β z) and with the binary codes sign(z)."""
  relaxed = losses.hashnet_loss(hash_activation(z_NxK, beta), labels, alpha=alpha,
                                weighting='none')
  binary = losses.hashnet_loss(codes_lib.sign_codes(z_NxK).astype(jnp.float32), labels,
                               alpha=alpha, weighting='none')
  return relaxed, binary


def train(cfg: HashConfig, source: Source, split: Split,
          heldout: np.ndarray | None = None, loss_every: int = 25
          ) -> tuple[step_lib.TrainState, list[dict[str, float]]]:
  """Trains `cfg.num_steps` steps on the batches `run.train_and_evaluate` would use;
  every `loss_every` steps (and at the end) records the held-out pairwise losses with
  tanh(βz) and sign(z) when `heldout` indices are given.

  Returns:
    (final state, curve rows {'step', 'beta', 'loss_tanh', 'loss_sign'}).
  """
  mesh = parallel.make_mesh()
  init_rng, step_rng = np.asarray(jax.random.split(jax.random.PRNGKey(cfg.seed)))
  state = step_lib.create_train_state(cfg, source.images(split.train[:1]).shape[1:],
                                          init_rng, mesh)
  step_rng = parallel.replicate(step_rng, mesh)
  step_fn = step_lib.make_train_step(cfg, mesh)
  beta_fn = step_lib.make_beta_fn(cfg)
  curve = []

  def record(step):
    z = encoding.encode(state, source, heldout, len(heldout), mesh)
    beta = float(beta_fn(max(step - 1, 0)))  # β of the last step taken
    relaxed, binary = heldout_losses(jnp.asarray(z), source.labels[heldout], beta, cfg.alpha)
    curve.append({'step': step, 'beta': beta, 'loss_tanh': float(relaxed),
                  'loss_sign': float(binary)})

  for step in range(cfg.num_steps):
    if heldout is not None and step % loss_every == 0:
      record(step)
    batch = job.global_batch(cfg, source, split, step, mesh)
    state, _ = step_fn(state, batch, step_rng)
  if heldout is not None:
    record(cfg.num_steps)
  return state, curve


def score_codes(query_codes, db_codes, query_labels, db_labels, topk: int | None, bits: int
                ) -> dict[str, Any]:
  """A cell's scores: 'map' (mAP@topk, ties by index; the cell's settings hold topk),
  'map_interval', 'precision@radius2', 'pr_precision', 'pr_recall'."""
  report = metrics.retrieval_report(query_codes, db_codes, query_labels, db_labels,
                                    map_topks=(topk,), ties=('index', 'worst', 'best'),
                                    pr_curve=True)
  name = 'all' if topk is None else topk
  return {'map': report[f'map@{name}'],
          'map_interval': [report[f'map@{name}_worst'], report[f'map@{name}_best']],
          'precision@radius2': report['pr_precision'][min(2, bits)],
          'pr_precision': report['pr_precision'], 'pr_recall': report['pr_recall']}


def evaluate(state, cfg: HashConfig, source: Source, split: Split,
             continuous: bool = False) -> dict[str, dict[str, Any]]:
  """{'sign': scores} of the sign codes (`score_codes`), and with `continuous` also
  {'continuous': {'map'}}, ranking by ⟨tanh(β_T z_q), tanh(β_T z_i)⟩ (β_T: the last
  step's β)."""
  mesh = parallel.make_mesh()
  z_q = encoding.encode(state, source, split.query, cfg.eval_batch_size, mesh)
  z_db = encoding.encode(state, source, split.database, cfg.eval_batch_size, mesh)
  query_labels, db_labels = source.labels[split.query], source.labels[split.database]
  out = {'sign': score_codes(np.asarray(codes_lib.sign_codes(z_q)),
                             np.asarray(codes_lib.sign_codes(z_db)), query_labels, db_labels,
                             cfg.map_topk, cfg.bits)}
  if continuous:
    beta = float(step_lib.make_beta_fn(cfg)(cfg.num_steps - 1))
    out['continuous'] = {'map': metrics.inner_product_map(
        np.tanh(beta * z_q), np.tanh(beta * z_db), query_labels, db_labels, topk=cfg.map_topk)}
  return out


def shallow_encoder(method: str, source: Source, split: Split, bits: int,
                    seed: int):
  """LSH or ITQ fitted on the training images' raw pixels (in [−1, 1], flattened).

  Returns:
    encode(source, indices) → ±1 int8 codes [len(indices), bits] of those images' pixels.
  """
  if method not in SHALLOW:
    raise ValueError(f'shallow method {method!r}; accepted: {", ".join(SHALLOW)}')
  x_train = data_base.flat_pixels(source, split.train)
  if method == 'lsh':
    model = baselines.lsh_fit(x_train.shape[1], bits, seed=seed, mean_D=x_train.mean(0))
    return lambda src, idx: baselines.lsh_encode(model, data_base.flat_pixels(src, idx))
  model = baselines.itq_fit(x_train, bits, seed=seed)
  return lambda src, idx: baselines.itq_encode(model, data_base.flat_pixels(src, idx))


def shallow(method: str, source: Source, split: Split, bits: int, seed: int,
            topk: int | None) -> dict[str, Any]:
  """LSH or ITQ (`shallow_encoder`) scored like the deep codes (`score_codes`)."""
  encode = shallow_encoder(method, source, split, bits, seed)
  return score_codes(encode(source, split.query), encode(source, split.database),
                     source.labels[split.query], source.labels[split.database], topk, bits)
