"""The toy-benchmark GAN for 2-D data (PacGAN's setting, Lin et al. 2018, Sec. 5.1).

Generator: z [B, nz] → `depth` Dense + BatchNorm + ReLU layers of `hidden` units → points
[B, out_dim] (linear output). Discriminator: `depth` linear-maxout layers (`hidden` units, each
the max of `pieces` affine maps; no BatchNorm) → one logit. PacGAN: G 4 × 400, D 3 × 200 with
5 pieces, nz = 2. Both take (and ignore) class ids, so `gan.step.train_step` drives them
exactly as it drives the DCGAN.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class MLPGenerator(nn.Module):
  """z [B, nz] → points [B, out_dim]."""
  hidden: int = 400
  depth: int = 4
  out_dim: int = 2

  @nn.compact
  def __call__(self, z_BxZ, labels_B=None, *, train: bool = False):
    del labels_B
    x = z_BxZ
    for _ in range(self.depth):
      x = nn.Dense(self.hidden, use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Dense(self.out_dim)(x)


class MLPDiscriminator(nn.Module):
  """points [B, D] → logits [B]."""
  hidden: int = 200
  depth: int = 3
  pieces: int = 5

  @nn.compact
  def __call__(self, x_BxD, labels_B=None, *, train: bool = False):
    del labels_B, train
    x = x_BxD.reshape(x_BxD.shape[0], -1)
    for _ in range(self.depth):
      x = nn.Dense(self.hidden * self.pieces)(x)
      x = jnp.max(x.reshape(x.shape[0], self.hidden, self.pieces), axis=-1)
    return nn.Dense(1)(x)[:, 0]
