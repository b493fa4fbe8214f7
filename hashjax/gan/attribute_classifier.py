"""Does the conditioning work? An attribute classifier scores a conditional GAN's samples.

A small CNN with one softmax head per attribute (hair and eye colour) is trained through
`hashjax.runtime.loop` on the real tagged images of a GAN run, with a held-out split, in
`<gan workdir>/attribute_classifier/`. Its balanced accuracy on the held-out real images
(`<name>_accuracy_real`, the mean over values of the per-value accuracy) is the reference for
its balanced accuracy on samples generated for each value (`<name>_accuracy_generated`):
`score_samples` asks the EMA generator for SAMPLES_PER_VALUE images per value of each
attribute, the other attributes following the training data (`gan_eval.attribute_rows`).

  python -m hashjax.commands.attributes --workdir=RUN   # scores RUN's newest checkpoint

writes `<RUN>/attributes.json`; a run with `classifier_steps` > 0 puts the same entries in
eval.jsonl and eval.json at every evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from hashjax.gan import evaluation as gan_eval
from hashjax.models.dcgan import StridedConv
from hashjax.runtime import loop
from hashjax.runtime.settings import CheckpointConfig

HOLDOUT_FRACTION = 0.1  # of the tagged images, kept out of the classifier's training
SAMPLES_PER_VALUE = 64
SUBDIR = 'attribute_classifier'


class AttributeCNN(nn.Module):
  """images [B, S, S, C] in [−1, 1] → one logit vector per attribute ([B, V_a] each)."""
  sizes: tuple[int, ...]
  width: int = 32

  @nn.compact
  def __call__(self, x):
    for i in range(4):  # S → S/16
      x = nn.leaky_relu(StridedConv(self.width * 2 ** min(i, 2))(x), 0.2)
    x = x.mean(axis=(1, 2))
    return tuple(nn.Dense(size, name=f'head_{a}')(x) for a, size in enumerate(self.sizes))


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """The classifier's run: what `hashjax.runtime.loop` needs, and its learning rate."""
  sizes: tuple[int, ...]
  num_steps: int
  seed: int
  batch_size: int = 64
  learning_rate: float = 1e-3
  log_every: int = 100
  eval_every: int = 500  # held-out accuracy over training, in eval.jsonl
  checkpoint_every: int = 10**9
  checkpoint: CheckpointConfig = CheckpointConfig(max_to_keep=1, async_save=False)


def split(labels_NxA: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, held-out) positions of the images with at least one known attribute."""
  tagged = np.flatnonzero((labels_NxA >= 0).any(1))
  perm = np.random.default_rng([seed, 0xC1A5]).permutation(tagged)
  cut = max(1, int(round(HOLDOUT_FRACTION * len(perm))))
  return np.sort(perm[cut:]), np.sort(perm[:cut])


def balanced_accuracy(pred_N: np.ndarray, true_N: np.ndarray, size: int) -> float:
  """Mean over the values present in true_N (≥ 0) of the fraction predicted right."""
  known = true_N >= 0
  per_value = [np.mean(pred_N[known & (true_N == v)] == v) for v in range(size)
               if (known & (true_N == v)).any()]
  return float(np.mean(per_value)) if per_value else float('nan')


def _loss(params, apply_fn, images, labels_BxA):
  total, count = 0.0, 0.0
  for a, logits in enumerate(apply_fn({'params': params}, images)):
    known = labels_BxA[:, a] >= 0
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels_BxA[:, a],
                                                                              0))
    total, count = total + jnp.sum(nll * known), count + jnp.sum(known)
  return total / jnp.maximum(count, 1.0)


class ClassifierState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  apply_fn: Any = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)


def _init_state(cfg: ClassifierConfig, image_shape, rng) -> ClassifierState:
  model, tx = AttributeCNN(tuple(cfg.sizes)), optax.adam(cfg.learning_rate)
  params = model.init(rng, jnp.zeros((1, *image_shape)))['params']
  return ClassifierState(jnp.zeros((), jnp.int32), params, tx.init(params), model.apply, tx)


def mirror(key, images_BxSxSxC):
  """Each image flipped left-right with probability 1/2 (colours and tags unchanged)."""
  flip = jax.random.bernoulli(key, shape=(images_BxSxSxC.shape[0], 1, 1, 1))
  return jnp.where(flip, images_BxSxSxC[:, :, ::-1], images_BxSxSxC)


def _train_step(state: ClassifierState, batch, rng):
  images = mirror(jax.random.fold_in(rng, state.step), batch['image'])
  loss, grads = jax.value_and_grad(_loss)(state.params, state.apply_fn, images, batch['label'])
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), {'loss': loss}


@jax.jit
def predict(state: ClassifierState, images):
  """The most likely value of each attribute: int [B, A]."""
  return jnp.stack([jnp.argmax(l, -1) for l in state.apply_fn({'params': state.params},
                                                              images)], -1)


def predict_all(state: ClassifierState, images: np.ndarray, batch: int = 256) -> np.ndarray:
  """`predict` over float or uint8 images [N, S, S, C] in batches: int [N, A]."""
  return np.concatenate([np.asarray(predict(state, gan_eval.as_float(images[i:i + batch])))
                         for i in range(0, len(images), batch)])


class ClassifierJob(loop.Job):
  """The classifier as a job of `hashjax.runtime.loop`, on a GAN run's images and attribute ids."""
  loss_keys = ('loss',)

  def __init__(self, cfg: ClassifierConfig, workdir: str, *, images, labels, names):
    self.cfg, self.workdir = cfg, workdir
    self.images, self.labels, self.names = images, labels, tuple(names)
    self.train_positions, self.held_out = split(labels, cfg.seed)
    self.num_examples = len(self.train_positions)
    self.init_state = functools.partial(_init_state, cfg, images.shape[1:])
    self.train_step = _train_step

  def examples(self, positions):
    idx = self.train_positions[positions]
    return {'image': gan_eval.as_float(self.images[idx]), 'label': self.labels[idx]}

  def evaluate(self, state, step):
    pred = predict_all(state, self.images[self.held_out])
    true = self.labels[self.held_out]
    return {'step': step, 'held_out': int(len(self.held_out)), **{
        f'{name}_accuracy_real': balanced_accuracy(pred[:, a], true[:, a], self.cfg.sizes[a])
        for a, name in enumerate(self.names)}}

  def finish(self, state, eval_row, last_log_row):
    return dict(eval_row or self.evaluate(state, int(state.step)))


def train(images, labels, names, sizes, workdir: str, num_steps: int, seed: int
          ) -> tuple[ClassifierState, dict[str, Any]]:
  """Trains (or resumes, or reloads) the classifier in `<workdir>/attribute_classifier`.

  Returns:
    (its final state, its eval.json: held_out count and `<name>_accuracy_real`).
  """
  cfg = ClassifierConfig(sizes=tuple(sizes), num_steps=num_steps, seed=seed)
  make = functools.partial(ClassifierJob, images=images, labels=labels, names=names)
  where = os.path.join(workdir, SUBDIR)
  results = loop.run(make, cfg, where)
  state, _ = loop.load_checkpoint(make(cfg, where), where)
  return state, results


def score_samples(gan_state, gan_cfg, classifier: ClassifierState, labels_NxA: np.ndarray,
                  names, values) -> dict[str, Any]:
  """`<name>_accuracy_generated` (balanced over values) and `<name>_accuracy_by_value`
  ({value name: accuracy}) of EMA samples generated for each value of each attribute
  (names [A], values: each attribute's value names)."""
  out: dict[str, Any] = {}
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(gan_cfg.seed + 6151),
                                   (SAMPLES_PER_VALUE, gan_cfg.nz)))
  for a, (name, value_names) in enumerate(zip(names, values)):
    by_value = {}
    for v, value_name in enumerate(value_names):
      rows = gan_eval.attribute_rows(labels_NxA, {a: v}, SAMPLES_PER_VALUE, gan_cfg.seed)
      fake = np.asarray(gan_eval.generate_ema(gan_state, z, rows))
      by_value[value_name] = float(np.mean(predict_all(classifier, fake)[:, a] == v))
    out[f'{name}_accuracy_generated'] = float(np.mean(list(by_value.values())))
    out[f'{name}_accuracy_by_value'] = by_value
  return out
