"""A drop-in `conv_general_dilated` for `nn.Conv` whose 1×1 kernel gradient is a matmul on CPU.

XLA:CPU computes the kernel gradient of a convolution as another convolution (of the input
with the output gradient, contracting over the batch), with the input and the output gradient
transposed to put the batch last. For a 1×1 convolution the kernel gradient is a single
matmul, the (strided) input [C, B·H'·W'] times the output gradient [B·H'·W', O], and as one it
made the HashNet ResNet-50 step 1.11× faster (8 alternating single steps). The same matmul per
kernel tap for larger kernels (`kernel_gradient` takes any size) made it 0.78× as fast, so
3×3 and larger kernels keep XLA's kernel gradient, as do the forward pass and the input
gradient. (On YNNPACK's convolutions, before `cpu_compiler_options`, the per-tap form had been
the faster one: 227 ms for the small CNN's 32→32 3×3 layer at batch 256, three times its
forward pass.)

Use: `nn.Conv(..., conv_general_dilated=conv_general_dilated)`. Off CPU, and for kernels
larger than 1×1, dilated or grouped convolutions, it is exactly `lax.conv_general_dilated`.

Which convolution kernels XLA:CPU runs is itself a choice (`cpu_compiler_options`): by
default it hands them to YNNPACK, whose kernels were 1.5–3× slower on this project's CPU than
Eigen's for the small CNN's and AlexNet's layers.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

log = logging.getLogger(__name__)

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# XLA:CPU runs convolutions, dots, reductions and elementwise fusions through YNNPACK by
# default. The train steps run faster with convolutions and dots on Eigen, YNNPACK keeping the
# reductions (a reduction's fusion may take in the convolution that feeds it). Alternating
# rounds in one process: small CNN 504 ex/s with dots and reductions on YNNPACK, 420 with dots
# only, 493 with elementwise fusions added; ResNet-50 3.2 against 2.8 with XLA's defaults.
# Dots then moved to Eigen too: AlexNet 1.07x (its fc layers' forward passes: YNNPACK ran
# 9216→4096 at batch 32 in 47–50 ms, Eigen in 21–25), the small CNN, ResNet-50 and the DCGAN
# step unchanged within noise (docs/PERFORMANCE.md).
_CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'}


@functools.lru_cache(maxsize=None)
def _cpu_accepts_options() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(jnp.float32(0)).compile()
  except RuntimeError as e:  # jax.errors.JaxRuntimeError (XlaRuntimeError in older jaxlibs)
    log.warning('XLA:CPU does not accept %s (%s); using its default kernels', _CPU_OPTIONS,
                str(e).splitlines()[0])
    return False
  return True


def cpu_compiler_options() -> dict[str, str] | None:
  """`jax.jit(..., compiler_options=...)` for the train steps (HashNet, GAN): on XLA:CPU,
  convolutions and dots on Eigen instead of YNNPACK (see _CPU_OPTIONS). None off CPU, and on a
  jaxlib that does not know the option (logged once)."""
  if jax.default_backend() != 'cpu' or not _cpu_accepts_options():
    return None
  return dict(_CPU_OPTIONS)


def _forward(x, kernel, strides, pads):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, pads):
  return _forward(x, kernel, strides, pads)


def _conv_fwd(x, kernel, strides, pads):
  return _forward(x, kernel, strides, pads), (x, kernel)


def kernel_gradient(x_BxHxWxC, dy_BxhxwxO, kernel_hw, strides, pads) -> jax.Array:
  """d(loss)/d(kernel) [kh, kw, C, O] (float32) of the NHWC/HWIO convolution of x with the
  given strides and padding, from the output gradient dy: one [C, B·h·w] @ [B·h·w, O]
  matmul per kernel tap, the windows never stacked into an im2col matrix."""
  (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, dy_BxhxwxO.shape[1:3]
  fan_in, fan_out = x_BxHxWxC.shape[-1], dy_BxhxwxO.shape[-1]
  dy = dy_BxhxwxO.reshape(-1, fan_out)
  padded = jnp.pad(x_BxHxWxC, ((0, 0), *pads, (0, 0)))
  taps = [jnp.dot(padded[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                  .reshape(-1, fan_in).T, dy, preferred_element_type=jnp.float32)
          for i in range(kh) for j in range(kw)]
  return jnp.stack(taps).reshape(kh, kw, fan_in, fan_out)


def _conv_bwd(strides, pads, residuals, dy_BxHxWxO):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _forward(x, kernel, strides, pads), x)
  dx, = input_vjp(dy_BxHxWxO)
  dkernel = kernel_gradient(x, dy_BxHxWxO, kernel.shape[:2], strides, pads)
  return dx, dkernel.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, with the kernel gradient as a matmul for plain 2-D NHWC/HWIO
  1×1 convolutions on CPU (any stride and padding). Same arguments and result."""
  plain = (jax.default_backend() == 'cpu' and lhs.ndim == 4 and feature_group_count == 1
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and precision is None and preferred_element_type is None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
           and rhs.shape[:2] == (1, 1))
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, precision=precision, preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(lhs, rhs, tuple(int(s) for s in window_strides), pads)
