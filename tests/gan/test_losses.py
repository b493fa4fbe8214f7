"""The GAN losses against hand-computed values."""

import math

import jax.numpy as jnp
import pytest

from hashjax.gan.losses import discriminator_loss, generator_loss


def test_discriminator_loss_hand_values():
  # D(x) = σ(0) = 1/2 on both: −log(1/2) − log(1 − 1/2) = 2 log 2.
  assert float(discriminator_loss(jnp.zeros(3), jnp.zeros(3))) == pytest.approx(2 * math.log(2))
  real, fake = jnp.array([2.0]), jnp.array([-1.0])
  expected = -math.log(1 / (1 + math.exp(-2))) - math.log(1 - 1 / (1 + math.exp(1)))
  assert float(discriminator_loss(real, fake)) == pytest.approx(expected, rel=1e-6)
  # One-sided smoothing 0.1: real target 0.9, fake target stays 0.
  p = 1 / (1 + math.exp(-2))
  smoothed = -(0.9 * math.log(p) + 0.1 * math.log(1 - p)) - math.log(1 - 1 / (1 + math.exp(1)))
  assert float(discriminator_loss(real, fake, label_smoothing=0.1)) == pytest.approx(smoothed, rel=1e-6)


def test_generator_losses_hand_values():
  logits = jnp.array([1.0, -2.0])
  d = [1 / (1 + math.exp(-l)) for l in (1.0, -2.0)]
  ns = -sum(math.log(x) for x in d) / 2
  mm = sum(math.log(1 - x) for x in d) / 2
  assert float(generator_loss(logits)) == pytest.approx(ns, rel=1e-6)
  assert float(generator_loss(logits, kind='minimax')) == pytest.approx(mm, rel=1e-6)
  with pytest.raises(ValueError, match="unknown generator loss 'wasserstein'"):
    generator_loss(logits, kind='wasserstein')
  with pytest.raises(ValueError, match='label_smoothing=1.0'):
    discriminator_loss(logits, logits, label_smoothing=1.0)
