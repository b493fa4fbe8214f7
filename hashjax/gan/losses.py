"""The GAN's losses (Goodfellow et al. 2014), on discriminator logits; nats."""

from __future__ import annotations

import jax
import jax.numpy as jnp

GENERATOR_LOSSES = ('non_saturating', 'minimax')


def discriminator_loss(logits_real_B: jax.Array, logits_fake_B: jax.Array, *,
                       label_smoothing: float = 0.0) -> jax.Array:
  """Binary cross-entropy of D: real → 1 (or 1 − label_smoothing, one-sided), fake → 0.

  Equals −V(G, D) = −(E log D(x) + E log(1 − D(G(z)))) when label_smoothing = 0; nats.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing={label_smoothing} must be in [0, 1)')
  target = 1.0 - label_smoothing
  real = target * jax.nn.softplus(-logits_real_B) + (1 - target) * jax.nn.softplus(logits_real_B)
  fake = jax.nn.softplus(logits_fake_B)  # −log(1 − σ(l)) = softplus(l)
  return jnp.mean(real) + jnp.mean(fake)


def generator_loss(logits_fake_B: jax.Array, *, kind: str = 'non_saturating') -> jax.Array:
  """G's loss on D's logits for generated samples, nats.

  'non_saturating': −E log D(G(z)) (strong gradients early; the usual choice).
  'minimax': E log(1 − D(G(z))), the original objective G minimises.
  """
  if kind == 'non_saturating':
    return jnp.mean(jax.nn.softplus(-logits_fake_B))
  if kind == 'minimax':
    return -jnp.mean(jax.nn.softplus(logits_fake_B))
  raise ValueError(f'unknown generator loss {kind!r}; accepted: {", ".join(GENERATOR_LOSSES)}')
