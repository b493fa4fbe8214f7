"""HashNet: a backbone followed by a K-bit hash layer (Cao et al., ICCV 2017)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hashjax.models.backbones import make_backbone


class HashNet(nn.Module):
  """Images → backbone features → Dense(bits) → z.

  `apply` returns the hash layer's pre-activation z [B, bits]. Training uses the continuation
  activation h = tanh(β·z) (`hash_activation`); retrieval uses binary codes sign(z) with
  sign(0) = +1 (`hashjax.sign_codes`). Parameters live under params['backbone'] and
  params['hash_layer'] (the optimizer gives them a larger learning rate).

  Attributes:
    bits: code length K. backbone: one of `hashjax.models.BACKBONES`.
  """
  bits: int
  backbone: str = 'small_cnn'

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    features_BxF = make_backbone(self.backbone, name='backbone')(images_BxHxWxC, train=train)
    return nn.Dense(self.bits, name='hash_layer')(features_BxF)


def hash_activation(z_BxK: jax.Array, beta) -> jax.Array:
  """HashNet's continuation activation tanh(β·z); approaches sign(z) as β grows."""
  return jnp.tanh(beta * z_BxK)
