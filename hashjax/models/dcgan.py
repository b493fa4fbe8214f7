"""DCGAN (Radford, Metz & Chintala 2015) as in the reference PyTorch example, flax linen, NHWC.

Generator: z [B, nz] (+ one-hot class for the conditional GAN) → 4×4 transposed conv → BN →
ReLU, then stride-2 4×4 transposed convs doubling the resolution and halving the channels
(ngf·8 → ngf at 64 px; ngf·4 → ngf at 32 px), each with BN + ReLU, and a last one to
`channels` with tanh: images in [−1, 1].
Discriminator: mirrors it — Conv 4×4/2 + LeakyReLU(0.2) without BN, stride-2 convs doubling
the channels with BN + LeakyReLU, a 4×4 valid conv to one logit (no sigmoid). The
conditional discriminator sees the one-hot class as extra constant input channels.
Weights N(0, 0.02), BatchNorm scale N(1, 0.02); BN momentum 0.9 (PyTorch's 0.1).

The generator's stride-2 layers are `SubpixelConvTranspose`: the same function and kernel
layout as `nn.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)))`, computed as
one 3×3 convolution to 4× the channels followed by depth-to-space. XLA:CPU differentiates
`lax.conv_transpose` (an lhs-dilated convolution) pathologically slowly (jax-ml/jax#31662);
this form only has regular convolutions and does no multiplications by inserted zeros.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

conv_init = nn.initializers.normal(0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


# For output phase a ∈ {0, 1} (even / odd rows), which of the three input rows i−1, i, i+1
# (window position r) meets which kernel row d of the 4×4 transposed-conv kernel.
_PHASE_TAPS = {0: ((0, 0), (1, 2)), 1: ((1, 1), (2, 3))}


def subpixel_kernel(kernel_4x4xIxO: jax.Array) -> jax.Array:
  """A 4×4 stride-2 transposed-conv kernel as a 3×3 conv kernel [3, 3, I, 4·O] whose output
  channels are the four output phases (row phase, column phase, O)."""
  _, _, fan_in, fan_out = kernel_4x4xIxO.shape
  k = jnp.zeros((3, 3, fan_in, 2, 2, fan_out), kernel_4x4xIxO.dtype)
  for a, row_taps in _PHASE_TAPS.items():
    for r, d in row_taps:
      for b, col_taps in _PHASE_TAPS.items():
        for s, e in col_taps:
          k = k.at[r, s, :, a, b, :].set(kernel_4x4xIxO[d, e])
  return k.reshape(3, 3, fan_in, 4 * fan_out)


class SubpixelConvTranspose(nn.Module):
  """×2 upsampling transposed convolution, 4×4 kernel, as a 3×3 conv + depth-to-space.

  Parameters `kernel` [4, 4, in, out] and `bias` [out] are those of
  `nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))`, which
  computes the same function (PyTorch's ConvTranspose2d(k=4, s=2, p=1) up to a kernel flip).
  """
  features: int
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = conv_init

  @nn.compact
  def __call__(self, x_BxHxWxC):
    b, h, w, c = x_BxHxWxC.shape
    kernel = self.param('kernel', self.kernel_init, (4, 4, c, self.features))
    y = jax.lax.conv_general_dilated(
        x_BxHxWxC, subpixel_kernel(kernel).astype(x_BxHxWxC.dtype), (1, 1),
        ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y.reshape(b, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(b, 2 * h, 2 * w, self.features)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


def _num_stages(image_size: int) -> int:
  if image_size not in (32, 64):
    raise ValueError(f'image_size={image_size} is not supported; accepted: 32, 64')
  return {32: 3, 64: 4}[image_size]


class Generator(nn.Module):
  """z [B, nz] (and class ids [B] when num_classes > 0) → images [B, S, S, channels] in [−1, 1]."""
  image_size: int = 64
  nz: int = 100
  ngf: int = 64
  channels: int = 3
  num_classes: int = 0

  @nn.compact
  def __call__(self, z_BxZ, labels_B=None, *, train: bool = False):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                scale_init=bn_scale_init)
    if self.num_classes:
      z_BxZ = jnp.concatenate([z_BxZ, jax.nn.one_hot(labels_B, self.num_classes)], axis=-1)
    stages = _num_stages(self.image_size)
    width = self.ngf * 2 ** (stages - 1)
    x = z_BxZ[:, None, None, :]
    x = nn.ConvTranspose(width, (4, 4), padding='VALID', use_bias=False,
                         kernel_init=conv_init)(x)  # 1×1 → 4×4: no dilation, compiles well
    x = nn.relu(norm()(x))
    for _ in range(stages - 1):
      width //= 2
      x = nn.relu(norm()(SubpixelConvTranspose(width, use_bias=False)(x)))
    return jnp.tanh(SubpixelConvTranspose(self.channels, use_bias=False)(x))


class Discriminator(nn.Module):
  """images [B, S, S, C] (and class ids [B] when num_classes > 0) → logits [B]."""
  image_size: int = 64
  ndf: int = 64
  num_classes: int = 0

  @nn.compact
  def __call__(self, images_BxSxSxC, labels_B=None, *, train: bool = False):
    x = images_BxSxSxC
    if self.num_classes:
      onehot = jax.nn.one_hot(labels_B, self.num_classes, dtype=x.dtype)
      x = jnp.concatenate([x, jnp.broadcast_to(onehot[:, None, None, :],
                                               (*x.shape[:3], self.num_classes))], axis=-1)
    stages = _num_stages(self.image_size)
    conv = lambda f: nn.Conv(f, (4, 4), (2, 2), padding=1, use_bias=False, kernel_init=conv_init)
    x = nn.leaky_relu(conv(self.ndf)(x), 0.2)
    for i in range(1, stages):
      x = conv(self.ndf * 2**i)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, scale_init=bn_scale_init)(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Conv(1, (4, 4), padding='VALID', use_bias=False, kernel_init=conv_init)(x)
    return x.reshape(x.shape[0])
