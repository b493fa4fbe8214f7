"""Jensen–Shannon divergence: discriminator lower bounds, a held-out estimator, and the exact
value for known densities.

For any discriminator D = σ(logit), V(D) = E_data log D(x) + E_gen log(1 − D(x)) satisfies
V ≤ −log 4 + 2·JSD(p_data ‖ p_gen) with equality for the optimal D* = p_data/(p_data + p_gen)
(Goodfellow et al. 2014), so (log 4 + V)/2 is a lower bound on the JSD, in nats (divide by
log 2 for bits; the JSD is at most log 2 nats = 1 bit).

`estimate_jsd` trains a fresh classifier on half of two sample sets and evaluates that bound
on the other half, so overfitting cannot inflate it (a classifier two-sample test, Lopez-Paz &
Oquab 2017, whose held-out accuracy is also returned). `exact_jsd` is the Monte-Carlo JSD of
two distributions with known log densities, the ground truth the estimator is checked against.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

LOG2 = float(np.log(2.0))
CLASSIFIERS = ('mlp', 'dcgan_d')


class JSDBound(NamedTuple):
  nats: jax.Array
  bits: jax.Array


class JSDEstimate(NamedTuple):
  """Held-out JSD lower bound (nats), its bootstrap interval and the two-sample test accuracy."""
  jsd: float
  ci_low: float
  ci_high: float
  accuracy: float  # held-out, ties counted half; ≈ 0.5 when the two sets are indistinguishable


def jsd_lower_bound(logits_real_N: jax.Array, logits_fake_M: jax.Array) -> JSDBound:
  """(log 4 + mean log σ(real) + mean log(1 − σ(fake))) / 2, in nats and bits.

  Args:
    logits_real_N: D's logits on data samples [N]. logits_fake_M: on generated samples [M].

  Returns:
    `JSDBound(nats, bits)`, scalars; ≤ JSD(p_data ‖ p_gen) ≤ log 2 nats for any D, equal to
    the JSD for the optimal one (in expectation). It can be negative for a poor D.
  """
  value = (jnp.mean(jax.nn.log_sigmoid(logits_real_N))
           + jnp.mean(jax.nn.log_sigmoid(-logits_fake_M)))
  nats = (2 * LOG2 + value) / 2
  return JSDBound(nats=nats, bits=nats / LOG2)


def exact_jsd(log_p: Callable[[jax.Array], jax.Array], log_q: Callable[[jax.Array], jax.Array],
              samples_p_NxD: jax.Array, samples_q_MxD: jax.Array) -> jax.Array:
  """JSD(p ‖ q) = ½ E_p[log p − log m] + ½ E_q[log q − log m], m = (p + q)/2, in nats.

  Args:
    log_p, log_q: log densities, [N, D] → [N]. samples_p_NxD ~ p, samples_q_MxD ~ q.

  Returns:
    The Monte-Carlo estimate (a scalar in [0, log 2] up to sampling noise; its standard error
    falls as 1/√N).
  """
  def half(log_a, log_b, x):
    la, lb = log_a(x), log_b(x)
    return jnp.mean(la - (jnp.logaddexp(la, lb) - LOG2))
  return 0.5 * half(log_p, log_q, samples_p_NxD) + 0.5 * half(log_q, log_p, samples_q_MxD)


class MLPClassifier(nn.Module):
  """Flattened input [B, ...] → `depth` LeakyReLU layers of `hidden` units → logit [B]. The
  output layer starts at zero, so the untrained classifier's bound is exactly 0."""
  hidden: int = 256
  depth: int = 2

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train
    x = x.reshape(x.shape[0], -1)
    for _ in range(self.depth):
      x = nn.leaky_relu(nn.Dense(self.hidden)(x), 0.2)
    return nn.Dense(1, kernel_init=nn.initializers.zeros)(x)[:, 0]


def _split(n: int, rng: np.random.Generator, val_fraction: float):
  """Random positions: (train, validation, test); test is half, validation a part of the rest."""
  perm = rng.permutation(n)
  n_test = n // 2
  n_val = max(1, int(round((n - n_test) * val_fraction)))
  return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


# Temperatures tried on the validation logits (Platt-style scaling without bias): an
# overconfident classifier otherwise turns a good ranking into a negative bound.
_TEMPERATURES = np.concatenate([[0.0], np.geomspace(0.01, 100.0, 61)])


# Mixing weights ε of a uniform guess into the classifier: D = (1 − ε)·σ(l) + ε/2 is a
# discriminator too, so it still gives a lower bound, and each held-out term is ≥ log(ε/2):
# a confidently wrong held-out example cannot drag the estimate far below zero even when the
# validation part was separated perfectly (ε = 0 would then be chosen). It costs at most
# log(1 − ε/2) ≈ −5e-5 nats at the smallest ε.
_SMOOTHING = np.array([1e-4, 1e-3, 1e-2, 3e-2, 0.1])


def _log_d(logits, eps):
  """log D and log(1 − D) for D = (1 − eps)·σ(logits) + eps/2 (eps broadcasts)."""
  with np.errstate(divide='ignore'):
    keep, floor = np.log1p(-eps), np.log(eps / 2)
  return (np.logaddexp(keep - np.logaddexp(0.0, -logits), floor),
          np.logaddexp(keep - np.logaddexp(0.0, logits), floor))


def _calibrated_bound(logits_r, logits_f):
  """(best bound, (scale, ε)) over logit scales and uniform-mixing weights ε on validation
  logits; scale 0 gives bound 0."""
  a = _TEMPERATURES[:, None, None]
  eps = _SMOOTHING[None, :, None]
  terms = (np.mean(_log_d(a * logits_r[None, None], eps)[0], axis=-1)
           + np.mean(_log_d(a * logits_f[None, None], eps)[1], axis=-1))
  t, e = np.unravel_index(int(np.argmax(terms)), terms.shape)
  return (2 * LOG2 + terms[t, e]) / 2, (float(_TEMPERATURES[t]), float(_SMOOTHING[e]))


@functools.lru_cache(maxsize=32)
def _classifier_fns(classifier: str, hidden: int, depth: int, ndf: int, image_size: int,
                    batch_size: int, learning_rate: float):
  """Jitted (init, train step, logits) of a fresh classifier; cached so repeated estimates
  (one per GAN evaluation) compile once. The steps run from a Python loop, not `lax.scan`:
  XLA:CPU runs convolutions inside a while loop far slower (docs/PERFORMANCE.md)."""
  if classifier == 'mlp':
    model = MLPClassifier(hidden=hidden, depth=depth)
  else:
    from hashjax.models.dcgan import Discriminator  # pylint: disable=g-import-not-at-top
    model = Discriminator(image_size=image_size, ndf=ndf)
  tx = optax.adam(learning_rate)

  def apply(params, stats, x, train):
    out, upd = model.apply({'params': params, 'batch_stats': stats}, x, train=train,
                           mutable=['batch_stats'])
    return out, upd.get('batch_stats', stats)

  def init(key, example):
    variables = model.init(key, example, train=False)
    params = variables['params']
    return params, variables.get('batch_stats', {}), tx.init(params)

  def loss(params, stats, xr, xf):
    # Real and fake share one batch: BatchNorm statistics of the mix, as a classifier should;
    # the held-out evaluation uses the running averages.
    out, stats = apply(params, stats, jnp.concatenate([xr, xf]), True)
    b = xr.shape[0]
    return -(jnp.mean(jax.nn.log_sigmoid(out[:b]))
             + jnp.mean(jax.nn.log_sigmoid(-out[b:]))), stats

  def step(state, key, i, tr, tf):
    params, stats, opt = state
    kr, kf = jax.random.split(jax.random.fold_in(key, i))
    xr = tr[jax.random.randint(kr, (batch_size,), 0, tr.shape[0])]
    xf = tf[jax.random.randint(kf, (batch_size,), 0, tf.shape[0])]
    (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params, stats, xr, xf)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), stats, opt

  def logits(params, stats, x):
    return apply(params, stats, x, False)[0]

  return jax.jit(init), jax.jit(step), jax.jit(logits)


def _logits_np(logits_fn, params, stats, x, chunk=512):
  """Logits [N] in float64, computed in zero-padded chunks of one shape (one compilation)."""
  padded = np.zeros((-(-len(x) // chunk) * chunk, *x.shape[1:]), np.float32)
  padded[:len(x)] = x
  return np.concatenate([np.asarray(logits_fn(params, stats, padded[i:i + chunk]), np.float64)
                         for i in range(0, len(padded), chunk)])[:len(x)]


def estimate_jsd(real: np.ndarray, fake: np.ndarray, *, classifier: str = 'mlp',
                 steps: int = 2000, seed: int = 0, batch_size: int = 256,
                 learning_rate: float = 1e-3, hidden: int = 128, depth: int = 2, ndf: int = 16,
                 val_fraction: float = 0.25, check_every: int = 100, confidence: float = 0.95,
                 num_bootstrap: int = 1000) -> JSDEstimate:
  """Held-out JSD lower bound between the distributions of two sample sets, in nats.

  Each set is split at random (from `seed`) into halves; a fresh classifier is trained with
  Adam on one half, less a `val_fraction` validation part that picks the best of the
  checkpoints taken every `check_every` steps (the untrained one included) together with a
  temperature for its logits (0 allowed: bound 0) and a weight ε of a uniform guess mixed into
  its output, D = (1 − ε)·σ(l) + ε/2 (so a few confidently wrong held-out examples cost at
  most log(ε/2) each), and the bound (log 4 + V)/2 of the chosen discriminator is evaluated
  on the other half. The value is reported raw:
  it is ≤ the JSD in expectation and may be slightly negative (≈ −0.005) for identical
  distributions; a weak classifier or too few samples bias it down, never up.

  Args:
    real, fake: [N, ...] and [M, ...] samples: 2-D points [N, 2], or NHWC images in [−1, 1].
    classifier: 'mlp' (standardised, flattened input, `depth` × `hidden` LeakyReLU) or
      'dcgan_d' (hashjax.models.dcgan.Discriminator with `ndf`, images 32 or 64 px).
    confidence, num_bootstrap: percentile bootstrap over the held-out per-sample terms (real
      and fake resampled separately); it covers sampling noise, not the bound's bias.

  Returns:
    `JSDEstimate(jsd, ci_low, ci_high, accuracy)`.
  Raises:
    ValueError: unknown classifier, too few samples, or inputs that do not fit the classifier.
  """
  if classifier not in CLASSIFIERS:
    raise ValueError(f'classifier={classifier!r} is not accepted; use one of: '
                     f'{", ".join(CLASSIFIERS)}')
  real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
  if real.shape[1:] != fake.shape[1:]:
    raise ValueError(f'real {real.shape} and fake {fake.shape} differ in their example shape')
  if min(len(real), len(fake)) < 8:
    raise ValueError(f'need at least 8 samples of each; got {len(real)} and {len(fake)}')
  image_size = 0
  if classifier == 'dcgan_d':
    if real.ndim != 4 or real.shape[1] != real.shape[2] or real.shape[1] not in (32, 64):
      raise ValueError(f"classifier='dcgan_d' needs NHWC images of 32 or 64 px; got "
                       f'{real.shape}; use classifier=\'mlp\'')
    image_size = real.shape[1]
  rng = np.random.default_rng(seed)
  (tr_r, va_r, te_r), (tr_f, va_f, te_f) = (_split(len(real), rng, val_fraction),
                                            _split(len(fake), rng, val_fraction))
  if classifier == 'mlp':  # standardise with the training part's statistics
    train = np.concatenate([real[tr_r], fake[tr_f]])
    mean = train.mean(axis=0)
    spread = float(np.sqrt(np.mean(train.var(axis=0)))) or 1.0
    real, fake = (real - mean) / spread, (fake - mean) / spread
  init, step, logits = _classifier_fns(classifier, hidden, depth, ndf, image_size, batch_size,
                                      float(learning_rate))
  tr, tf = jnp.asarray(real[tr_r]), jnp.asarray(fake[tr_f])
  vr, vf = real[va_r], fake[va_f]
  init_key, key = jax.random.split(jax.random.PRNGKey(seed))
  state = init(init_key, tr[:1])
  best = (-np.inf, 0.0, state)
  for i in range(steps + 1):
    if i % check_every == 0 or i == steps:  # the untrained classifier is a candidate too
      value, scale = _calibrated_bound(_logits_np(logits, state[0], state[1], vr),
                                       _logits_np(logits, state[0], state[1], vf))
      if value > best[0]:
        best = (value, scale, state)
    if i < steps:
      state = step(state, key, np.int32(i), tr, tf)
  _, (scale, eps), (params, stats, _) = best
  logits_r = scale * _logits_np(logits, params, stats, real[te_r])
  logits_f = scale * _logits_np(logits, params, stats, fake[te_f])
  return _summarise(logits_r, logits_f, rng, confidence, num_bootstrap, eps)


def _summarise(logits_r_N, logits_f_M, rng, confidence, num_bootstrap, eps=0.0
               ) -> JSDEstimate:
  terms_r = _log_d(logits_r_N, eps)[0]  # log D(real)
  terms_f = _log_d(logits_f_M, eps)[1]  # log(1 − D(fake))
  bound = lambda mean_r, mean_f: (2 * LOG2 + mean_r + mean_f) / 2
  boot_r = terms_r[rng.integers(0, len(terms_r), (num_bootstrap, len(terms_r)))].mean(axis=1)
  boot_f = terms_f[rng.integers(0, len(terms_f), (num_bootstrap, len(terms_f)))].mean(axis=1)
  tail = (1 - confidence) / 2 * 100
  low, high = np.percentile(bound(boot_r, boot_f), [tail, 100 - tail])
  correct = (np.sum(logits_r_N > 0) + np.sum(logits_f_M < 0)
             + 0.5 * (np.sum(logits_r_N == 0) + np.sum(logits_f_M == 0)))
  return JSDEstimate(jsd=float(bound(terms_r.mean(), terms_f.mean())), ci_low=float(low),
                     ci_high=float(high),
                     accuracy=float(correct / (len(logits_r_N) + len(logits_f_M))))
