"""DCGAN (Radford, Metz & Chintala 2015) as in the reference PyTorch example, flax linen, NHWC.

Generator: z [B, nz] (+ one-hot class for the conditional GAN) → 4×4 transposed conv → BN →
ReLU, then stride-2 4×4 transposed convs doubling the resolution and halving the channels
(ngf·8 → ngf at 64 px; ngf·4 → ngf at 32 px), each with BN + ReLU, and a last one to
`channels` with tanh: images in [−1, 1].
Discriminator: mirrors it — Conv 4×4/2 + LeakyReLU(0.2) without BN, stride-2 convs doubling
the channels with BN + LeakyReLU, a 4×4 valid conv to one logit (no sigmoid). The
conditional discriminator sees the one-hot class as extra constant input channels.
Weights N(0, 0.02), BatchNorm scale N(1, 0.02); BN momentum 0.9 (PyTorch's 0.1).

The stride-2 layers `StridedConvTranspose` and `StridedConv` have the parameters and compute
the function of `nn.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)))` and
`nn.Conv(features, (4, 4), (2, 2), padding=1)`; on CPU through `hashjax.ops`' kernels, which
avoid XLA:CPU's slow lhs-dilated convolutions.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hashjax import ops

conv_init = nn.initializers.normal(0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class StridedConv(nn.Module):
  """×2 downsampling convolution with a 4×4 kernel and padding 1 (`ops.strided_conv`).

  Parameters `kernel` [4, 4, in, out] and `bias` [out] are those of
  `nn.Conv(features, (4, 4), strides=(2, 2), padding=1)`, which computes the same function.
  """
  features: int
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = conv_init

  @nn.compact
  def __call__(self, x_BxHxWxC):
    kernel = self.param('kernel', self.kernel_init, (4, 4, x_BxHxWxC.shape[-1], self.features))
    y = ops.strided_conv(x_BxHxWxC, kernel)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


class StridedConvTranspose(nn.Module):
  """×2 upsampling transposed convolution with a 4×4 kernel (`ops.strided_conv_transpose`).

  Parameters `kernel` [4, 4, in, out] and `bias` [out] are those of
  `nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))`, which
  computes the same function (PyTorch's ConvTranspose2d(k=4, s=2, p=1) up to a kernel flip).
  """
  features: int
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = conv_init

  @nn.compact
  def __call__(self, x_BxHxWxC):
    kernel = self.param('kernel', self.kernel_init, (4, 4, x_BxHxWxC.shape[-1], self.features))
    y = ops.strided_conv_transpose(x_BxHxWxC, kernel)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


ATTRIBUTE_EMBED = 16  # width of each attribute's embedding


class AttributeEmbedding(nn.Module):
  """int ids [B, A] (−1: unknown) → [B, A·ATTRIBUTE_EMBED], one table per attribute."""
  attribute_sizes: tuple[int, ...]

  @nn.compact
  def __call__(self, ids_BxA):
    parts = []
    for a, size in enumerate(self.attribute_sizes):
      ids = jnp.where(ids_BxA[:, a] < 0, size, ids_BxA[:, a])  # row `size`: unknown
      parts.append(nn.Embed(size + 1, ATTRIBUTE_EMBED, name=f'attribute_{a}')(ids))
    return jnp.concatenate(parts, axis=-1)


def _num_stages(image_size: int) -> int:
  if image_size not in (32, 64):
    raise ValueError(f'image_size={image_size} is not supported; accepted: 32, 64')
  return {32: 3, 64: 4}[image_size]


class Generator(nn.Module):
  """z [B, nz] (and class ids [B] when num_classes > 0, or attribute ids [B, A] when
  attribute_sizes is set) → images [B, S, S, channels] in [−1, 1]."""
  image_size: int = 64
  nz: int = 100
  ngf: int = 64
  channels: int = 3
  num_classes: int = 0
  attribute_sizes: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, z_BxZ, labels_B=None, *, train: bool = False):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                scale_init=bn_scale_init)
    if self.attribute_sizes:
      z_BxZ = jnp.concatenate([z_BxZ, AttributeEmbedding(self.attribute_sizes)(labels_B)], -1)
    elif self.num_classes:
      z_BxZ = jnp.concatenate([z_BxZ, jax.nn.one_hot(labels_B, self.num_classes)], axis=-1)
    stages = _num_stages(self.image_size)
    width = self.ngf * 2 ** (stages - 1)
    x = z_BxZ[:, None, None, :]
    x = nn.ConvTranspose(width, (4, 4), padding='VALID', use_bias=False,
                         kernel_init=conv_init)(x)  # 1×1 → 4×4: no dilation, compiles well
    x = nn.relu(norm()(x))
    for _ in range(stages - 1):
      width //= 2
      x = nn.relu(norm()(StridedConvTranspose(width, use_bias=False)(x)))
    return jnp.tanh(StridedConvTranspose(self.channels, use_bias=False)(x))


class Discriminator(nn.Module):
  """images [B, S, S, C] (and class ids [B] when num_classes > 0, or attribute ids [B, A]
  when attribute_sizes is set) → logits [B]."""
  image_size: int = 64
  ndf: int = 64
  num_classes: int = 0
  attribute_sizes: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, images_BxSxSxC, labels_B=None, *, train: bool = False):
    x = images_BxSxSxC
    if self.attribute_sizes:
      condition = AttributeEmbedding(self.attribute_sizes)(labels_B).astype(x.dtype)
    elif self.num_classes:
      condition = jax.nn.one_hot(labels_B, self.num_classes, dtype=x.dtype)
    if self.attribute_sizes or self.num_classes:
      x = jnp.concatenate([x, jnp.broadcast_to(condition[:, None, None, :],
                                               (*x.shape[:3], condition.shape[-1]))], axis=-1)
    stages = _num_stages(self.image_size)
    conv = lambda f: StridedConv(f, use_bias=False)
    x = nn.leaky_relu(conv(self.ndf)(x), 0.2)
    for i in range(1, stages):
      x = conv(self.ndf * 2**i)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, scale_init=bn_scale_init)(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Conv(1, (4, 4), padding='VALID', use_bias=False, kernel_init=conv_init)(x)
    return x.reshape(x.shape[0])
