"""Convolutions whose 1×1 kernel gradient is one matmul on XLA:CPU.

XLA:CPU computes a convolution's kernel gradient as another, batch-contracting convolution;
for a 1×1 kernel one [I, B·h·w] @ [B·h·w, O] matmul is faster (ResNet). Larger kernels keep
XLA's gradient, as do the forward pass and the input gradient. Figures: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from hashjax.ops.backend import cpu_kernels

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _forward(x, kernel, strides, pads):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, pads):
  return _forward(x, kernel, strides, pads)


def _conv_fwd(x, kernel, strides, pads):
  return _forward(x, kernel, strides, pads), (x, kernel)


def kernel_gradient(x_BxHxWxI, dy_BxhxwxO, kernel_hw, strides, pads) -> jax.Array:
  """d(loss)/d(kernel) [kh, kw, I, O] (float32) of the NHWC/HWIO convolution of x with the
  given strides and padding, from the output gradient dy: one [I, B·h·w] @ [B·h·w, O]
  matmul per kernel tap, the windows never stacked into an im2col matrix."""
  (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, dy_BxhxwxO.shape[1:3]
  fan_in, fan_out = x_BxHxWxI.shape[-1], dy_BxhxwxO.shape[-1]
  dy = dy_BxhxwxO.reshape(-1, fan_out)
  padded = jnp.pad(x_BxHxWxI, ((0, 0), *pads, (0, 0)))
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


def _plain_1x1(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
               precision, preferred_element_type) -> bool:
  """A 2-D NHWC/HWIO 1×1 convolution, undilated, ungrouped, at default precision."""
  return (lhs.ndim == 4 and feature_group_count == 1
          and all(d == 1 for d in (lhs_dilation or (1, 1)))
          and all(d == 1 for d in (rhs_dilation or (1, 1)))
          and precision is None and preferred_element_type is None
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
          and rhs.shape[:2] == (1, 1))


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated` (same arguments and result); with `cpu_kernels()`, plain 2-D
  1×1 convolutions (any stride and padding) take the matmul kernel gradient."""
  if not (cpu_kernels() and _plain_1x1(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                                       feature_group_count, precision, preferred_element_type)):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, precision=precision, preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(lhs, rhs, tuple(int(s) for s in window_strides), pads)


# nn.Conv, with the matmul 1×1 kernel gradient on CPU: the same parameters either way.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
