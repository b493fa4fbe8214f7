"""DCGAN's stride-2 4×4 layers without an lhs-dilated convolution, for XLA:CPU.

`lax.conv_transpose` is an lhs-dilated convolution, and XLA's input gradient of a strided
convolution is one too; XLA:CPU differentiates and runs those pathologically slowly
(jax-ml/jax#31662). Figures: docs/PERFORMANCE.md.

`strided_conv(x, k)` is `nn.Conv(O, (4, 4), (2, 2), padding=1)`'s convolution and
`strided_conv_transpose(x, k)` is `nn.ConvTranspose(O, (4, 4), (2, 2), padding=((2, 2),
(2, 2)))`'s (NHWC, kernels HWIO [4, 4, I, O], no bias): with `cpu_kernels()`
`conv_4x4_s2` and `conv_transpose_4x4_s2`, elsewhere lax's own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from hashjax.ops.backend import cpu_kernels

_NHWC = ('NHWC', 'HWIO', 'NHWC')
_PAD1 = ((1, 1), (1, 1))
# The four-phase convolution from this size and width up; tiny layers keep one matmul.
_PHASES_MIN_SIZE, _PHASES_MIN_FEATURES = 8, 32


def _check(x, kernel, name: str):
  if x.ndim != 4 or kernel.shape[:2] != (4, 4) or kernel.ndim != 4 \
      or kernel.shape[2] != x.shape[-1]:
    raise ValueError(f'{name} needs x [B, H, W, I] and a kernel [4, 4, I, O], got '
                     f'{tuple(x.shape)} and {tuple(kernel.shape)}')


def strided_conv(x_BxHxWxI: jax.Array, kernel_4x4xIxO: jax.Array) -> jax.Array:
  """[B, H, W, I] → [B, H/2, W/2, O] for even H, W: the 4×4 stride-2 convolution, padding 1."""
  _check(x_BxHxWxI, kernel_4x4xIxO, 'strided_conv')
  if x_BxHxWxI.shape[1] % 2 or x_BxHxWxI.shape[2] % 2:
    raise ValueError(f'strided_conv needs an even height and width, got '
                     f'{x_BxHxWxI.shape[1:3]}')
  if cpu_kernels():
    return conv_4x4_s2(x_BxHxWxI, kernel_4x4xIxO)
  return _conv_4x4_s2(x_BxHxWxI, kernel_4x4xIxO)


def strided_conv_transpose(x_BxHxWxI: jax.Array, kernel_4x4xIxO: jax.Array) -> jax.Array:
  """[B, H, W, I] → [B, 2H, 2W, O]: the 4×4 stride-2 transposed convolution (flax's
  convention: PyTorch's ConvTranspose2d(k=4, s=2, p=1) up to a kernel flip)."""
  _check(x_BxHxWxI, kernel_4x4xIxO, 'strided_conv_transpose')
  if cpu_kernels():
    return conv_transpose_4x4_s2(x_BxHxWxI, kernel_4x4xIxO)
  return lax.conv_transpose(x_BxHxWxI, kernel_4x4xIxO.astype(x_BxHxWxI.dtype), (2, 2),
                            ((2, 2), (2, 2)), dimension_numbers=_NHWC)


@jax.custom_vjp
def conv_transpose_4x4_s2(x_BxHxWxI: jax.Array, kernel_4x4xIxO: jax.Array) -> jax.Array:
  """`strided_conv_transpose` for XLA:CPU, with no lhs-dilated convolution and no
  multiplications by inserted zeros.

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
  # XLA:CPU's matmul is slow when its contraction (I) is short against its output (16·O).
  _, h, w, _ = x_BxHxWxI.shape
  if min(h, w) >= _PHASES_MIN_SIZE and kernel_4x4xIxO.shape[-1] >= _PHASES_MIN_FEATURES:
    return _conv_transpose_phases(x_BxHxWxI, kernel_4x4xIxO)
  return _conv_transpose_matmul(x_BxHxWxI, kernel_4x4xIxO)


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
  y = lax.conv_general_dilated(padded, phases.astype(x_BxHxWxI.dtype), (1, 1), 'VALID',
                               dimension_numbers=_NHWC)
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


def _flip_transpose(kernel_4x4xIxO):
  """The kernel of the adjoint: spatially flipped, in/out channels swapped."""
  return kernel_4x4xIxO[::-1, ::-1].transpose(0, 1, 3, 2)


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
  """`strided_conv` for XLA:CPU: XLA's forward pass and kernel gradient; dx, which XLA would
  compute as an lhs-dilated convolution, is the transposed convolution of dy
  (`conv_transpose_4x4_s2`'s forward computation). Reverse mode only (a custom VJP)."""
  return _conv_4x4_s2(x_BxHxWxI, kernel_4x4xIxO)


def _conv_4x4_s2(x, kernel):
  return lax.conv_general_dilated(x, kernel.astype(x.dtype), (2, 2), _PAD1,
                                  dimension_numbers=_NHWC)


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
