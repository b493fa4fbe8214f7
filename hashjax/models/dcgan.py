"""DCGAN (Radford, Metz & Chintala 2015) as in the reference PyTorch example, flax linen, NHWC.

Generator: z [B, nz] (+ one-hot class for the conditional GAN) → 4×4 transposed conv → BN →
ReLU, then stride-2 4×4 transposed convs doubling the resolution and halving the channels
(ngf·8 → ngf at 64 px; ngf·4 → ngf at 32 px), each with BN + ReLU, and a last one to
`channels` with tanh: images in [−1, 1].
Discriminator: mirrors it — Conv 4×4/2 + LeakyReLU(0.2) without BN, stride-2 convs doubling
the channels with BN + LeakyReLU, a 4×4 valid conv to one logit (no sigmoid). The
conditional discriminator sees the one-hot class as extra constant input channels.
Weights N(0, 0.02), BatchNorm scale N(1, 0.02); BN momentum 0.9 (PyTorch's 0.1).

The generator's stride-2 layers are `StridedConvTranspose`: the same function and kernel
layout as `nn.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)))`, computed as
one stride-1 convolution over the four output phases (or, for small layers, a matmul and an
overlap-add). XLA:CPU differentiates `lax.conv_transpose` (an lhs-dilated convolution)
pathologically slowly (jax-ml/jax#31662); these forms have no dilated convolution.
The discriminator's stride-2 layers are `StridedConv` (the function and parameters of
`nn.Conv(features, (4, 4), (2, 2), padding=1)`) with the backward pass written as matmuls.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


conv_init = nn.initializers.normal(0.02)
_PAD1 = ((1, 1), (1, 1))


def bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


@jax.custom_vjp
def conv_transpose_4x4_s2(x_BxHxWxI: jax.Array, kernel_4x4xIxO: jax.Array) -> jax.Array:
  """`lax.conv_transpose(x, kernel, (2, 2), ((2, 2), (2, 2)))` in NHWC/HWIO, [B, H, W, I] →
  [B, 2H, 2W, O], without an lhs-dilated convolution (which XLA:CPU differentiates
  pathologically slowly, jax-ml/jax#31662) and without multiplications by inserted zeros.

  Inputs of at least 8×8 px with at least 32 output features: the four output phases (even/odd
  row × column) are one stride-1 2×2 convolution with 4·O outputs, then depth-to-space.
  Smaller layers: one matmul and an overlap-add (col2im): every input pixel is multiplied by
  the whole kernel at once ([B·H·W, I] @ [I, 16·O]) and the 4×4 output patches are summed
  into the stride-2 output grid with padded adds (kernel row ky = 2p + a lands in output row
  block i + p, phase a). Backward (a custom VJP, reverse mode only): dx is the stride-2
  convolution of dy with the flipped, transposed kernel; dkernel is XLA's kernel gradient of
  that stride-2 convolution (of dy, against x).
  """
  return _conv_transpose_4x4_s2(x_BxHxWxI, kernel_4x4xIxO)


def _conv_transpose_4x4_s2(x_BxHxWxI, kernel_4x4xIxO):
  # XLA:CPU's matmul is slow when its contraction (I) is short against its output (16·O):
  # [16384, 128] @ [128, 1024] runs at ~65 GFLOP/s, a third of this CPU's peak. Layers with
  # room for it compute the four output phases as one stride-1 convolution instead (2.2×
  # faster for 128→64 at 16 px, batch 64); tiny ones (4 px, or few outputs) keep the matmul.
  _, h, w, _ = x_BxHxWxI.shape
  if min(h, w) >= _PHASES_MIN_SIZE and kernel_4x4xIxO.shape[-1] >= _PHASES_MIN_FEATURES:
    return _conv_transpose_phases(x_BxHxWxI, kernel_4x4xIxO)
  return _conv_transpose_matmul(x_BxHxWxI, kernel_4x4xIxO)


_PHASES_MIN_SIZE, _PHASES_MIN_FEATURES = 8, 32


def _conv_transpose_phases(x_BxHxWxI, kernel_4x4xIxO):
  """Output pixel (2m + a − 1, 2n + c − 1) sums x[m − p, n − q] · k̃[2p + a, 2q + c] over
  p, q ∈ {0, 1} (k̃ = the flipped kernel): for each phase (a, c) a 2×2 convolution of x padded
  by one. All four phases are one convolution with 4·O outputs, then depth-to-space."""
  b, h, w, fan_in = x_BxHxWxI.shape
  fan_out = kernel_4x4xIxO.shape[-1]
  flipped = kernel_4x4xIxO[::-1, ::-1].reshape(2, 2, 2, 2, fan_in, fan_out)  # [p, a, q, c]
  phases = flipped[::-1, :, ::-1].transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, fan_in,
                                                                      4 * fan_out)
  padded = jnp.pad(x_BxHxWxI, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = jax.lax.conv_general_dilated(padded, phases.astype(x_BxHxWxI.dtype), (1, 1), 'VALID',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y = y.reshape(b, h + 1, w + 1, 2, 2, fan_out).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, 2 * h + 2, 2 * w + 2, fan_out)[:, 1:-1, 1:-1]


def _conv_transpose_matmul(x_BxHxWxI, kernel_4x4xIxO):
  b, h, w, fan_in = x_BxHxWxI.shape
  fan_out = kernel_4x4xIxO.shape[-1]
  # flax/lax transposed conv correlates with the kernel; as a scatter it uses it flipped.
  scatter = kernel_4x4xIxO[::-1, ::-1].transpose(2, 0, 1, 3).reshape(fan_in, 16 * fan_out)
  cols = jnp.dot(x_BxHxWxI.reshape(-1, fan_in), scatter.astype(x_BxHxWxI.dtype))
  cols = cols.reshape(b, h, w, 2, 2, 2, 2, fan_out)  # (p, a) rows, (q, c) columns
  acc = 0
  for p in range(2):
    for q in range(2):
      acc = acc + jnp.pad(cols[:, :, :, p, :, q], ((0, 0), (p, 1 - p), (q, 1 - q), (0, 0),
                                                   (0, 0), (0, 0)))
  y = acc.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h + 2, 2 * w + 2, fan_out)
  return y[:, 1:-1, 1:-1]


def _flip_transpose(kernel_4x4xAxB):
  """The kernel of the adjoint: spatially flipped, in/out channels swapped."""
  return kernel_4x4xAxB[::-1, ::-1].transpose(0, 1, 3, 2)


def _conv_transpose_4x4_s2_fwd(x, kernel):
  return _conv_transpose_4x4_s2(x, kernel), (x, kernel)


def _conv_transpose_4x4_s2_bwd(residuals, dy_Bx2Hx2WxO):
  x, kernel = residuals
  # y = conv_transpose(x, k) is the adjoint in x of z ↦ conv_4x4_s2(z, flip_transpose(k)).
  dx = _conv_4x4_s2(dy_Bx2Hx2WxO, _flip_transpose(kernel))
  dkernel = _flip_transpose(_kernel_gradient_4x4_s2(dy_Bx2Hx2WxO, x))
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


conv_transpose_4x4_s2.defvjp(_conv_transpose_4x4_s2_fwd, _conv_transpose_4x4_s2_bwd)


@jax.custom_vjp
def conv_4x4_s2(x_BxHxWxI: jax.Array, kernel_4x4xIxO: jax.Array) -> jax.Array:
  """`nn.Conv(O, (4, 4), (2, 2), padding=1)` without bias, NHWC/HWIO: [B, H, W, I] → [B, H/2,
  W/2, O] for even H, W.

  The forward pass is XLA's convolution, and so is dkernel (XLA's kernel gradient: with
  Eigen's convolutions, which the GAN step compiles for on CPU, 1.2–2.8× faster than one
  matmul per kernel tap). dx, which XLA would compute as a very slow lhs-dilated convolution,
  is the transposed convolution of dy (`conv_transpose_4x4_s2`'s forward computation).
  Reverse mode only (a custom VJP).
  """
  return _conv_4x4_s2(x_BxHxWxI, kernel_4x4xIxO)


def _conv_4x4_s2(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (2, 2), _PAD1,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _kernel_gradient_4x4_s2(x_BxHxWxI, dy_BxhxwxO):
  """d(loss)/d(kernel) [4, 4, I, O] of `_conv_4x4_s2(x, kernel)` from its output gradient."""
  kernel = jnp.zeros((4, 4, x_BxHxWxI.shape[-1], dy_BxhxwxO.shape[-1]), x_BxHxWxI.dtype)
  return jax.vjp(lambda k: _conv_4x4_s2(x_BxHxWxI, k), kernel)[1](dy_BxhxwxO)[0]


def _conv_4x4_s2_fwd(x, kernel):
  return _conv_4x4_s2(x, kernel), (x, kernel)


def _conv_4x4_s2_bwd(residuals, dy_BxHxWxO):
  x, kernel = residuals
  dkernel = _kernel_gradient_4x4_s2(x, dy_BxHxWxO)
  dx = _conv_transpose_4x4_s2(dy_BxHxWxO, _flip_transpose(kernel))
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


conv_4x4_s2.defvjp(_conv_4x4_s2_fwd, _conv_4x4_s2_bwd)


class StridedConv(nn.Module):
  """×2 downsampling convolution with a 4×4 kernel and padding 1 (`conv_4x4_s2`).

  Parameters `kernel` [4, 4, in, out] and `bias` [out] are those of
  `nn.Conv(features, (4, 4), strides=(2, 2), padding=1)`, which computes the same function.
  """
  features: int
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = conv_init

  @nn.compact
  def __call__(self, x_BxHxWxC):
    if x_BxHxWxC.shape[1] % 2 or x_BxHxWxC.shape[2] % 2:
      raise ValueError(f'StridedConv needs an even height and width, got {x_BxHxWxC.shape[1:3]}')
    kernel = self.param('kernel', self.kernel_init, (4, 4, x_BxHxWxC.shape[-1], self.features))
    y = conv_4x4_s2(x_BxHxWxC, kernel)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


class StridedConvTranspose(nn.Module):
  """×2 upsampling transposed convolution with a 4×4 kernel (`conv_transpose_4x4_s2`).

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
    y = conv_transpose_4x4_s2(x_BxHxWxC, kernel)
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
      x = nn.relu(norm()(StridedConvTranspose(width, use_bias=False)(x)))
    return jnp.tanh(StridedConvTranspose(self.channels, use_bias=False)(x))


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
    conv = lambda f: StridedConv(f, use_bias=False)
    x = nn.leaky_relu(conv(self.ndf)(x), 0.2)
    for i in range(1, stages):
      x = conv(self.ndf * 2**i)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, scale_init=bn_scale_init)(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Conv(1, (4, 4), padding='VALID', use_bias=False, kernel_init=conv_init)(x)
    return x.reshape(x.shape[0])
