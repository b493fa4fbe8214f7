"""HashNet: a backbone followed by a K-bit hash layer (Cao et al., ICCV 2017)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hashjax import ops
from hashjax.models.backbones import make_backbone


class HashNet(nn.Module):
  """Images → backbone features → Dense(bits) → z.

  `apply` returns the hash layer's pre-activation z [B, bits]. Training uses the continuation
  activation h = tanh(β·z) (`hash_activation`); retrieval uses binary codes sign(z) with
  sign(0) = +1 (`hashjax.sign_codes`). Parameters live under params['backbone'] and
  params['hash_layer'] (the optimizer gives them a larger learning rate).

  Attributes:
    bits: code length K. backbone: one of `hashjax.models.BACKBONES`.
    dtype: computation dtype (bfloat16 on GPU/TPU halves memory traffic); parameters stay
      float32 and z is returned as float32, so the loss is computed in float32.
  """
  bits: int
  backbone: str = 'small_cnn'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    backbone = make_backbone(self.backbone, dtype=self.dtype, name='backbone')
    features_BxF = backbone(images_BxHxWxC.astype(self.dtype), train=train)
    z_BxK = ops.Dense(self.bits, dtype=self.dtype, name='hash_layer')(features_BxF)
    return z_BxK.astype(jnp.float32)


def hash_activation(z_BxK: jax.Array, beta) -> jax.Array:
  """HashNet's continuation activation tanh(β·z); approaches sign(z) as β grows."""
  return jnp.tanh(beta * z_BxK)
