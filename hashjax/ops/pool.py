"""Max pooling: on XLA:CPU maxima of strided slices with an argmax-based custom gradient.

XLA:CPU's select-and-scatter gradient of `nn.max_pool`, and autodiff of a chain of maxima
(which XLA recomputes inside the backward pass), were slower. Figures: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from hashjax.ops.backend import cpu_kernels


def max_pool(x_BxHxWxC: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """`nn.max_pool(x, (window,)*2, (stride,)*2, padding)`: [B, H, W, C] → [B, (H + 2·padding −
  window) // stride + 1, …, C], padded with −inf; the gradient goes to the first maximum of
  each window, as in PyTorch. `slice_max_pool` with `cpu_kernels()`."""
  _check_window(x_BxHxWxC.shape, window, stride, padding)
  if cpu_kernels():
    return slice_max_pool(x_BxHxWxC, window, stride, padding)
  return nn.max_pool(x_BxHxWxC, (window, window), (stride, stride),
                     padding=((padding, padding), (padding, padding)))


def _check_window(shape, window: int, stride: int, padding: int):
  if len(shape) != 4 or window < 1 or stride < 1 or padding < 0 or \
      window > min(shape[1:3]) + 2 * padding:
    raise ValueError(f'max_pool needs [B, H, W, C] with 1 <= window <= H, W (+ 2 * padding) '
                     f'and stride >= 1, got shape {tuple(shape)}, window={window}, '
                     f'stride={stride}, padding={padding}')


def slice_max_pool(x_BxHxWxC: jax.Array, window: int, stride: int,
                   padding: int = 0) -> jax.Array:
  """`max_pool` for XLA:CPU. The forward pass compares the window² strided slices in turn,
  keeping each window's maximum and the index of its first maximum (int8); the backward pass
  sums the masked output gradient into the input grid phase by phase."""
  _check_window(x_BxHxWxC.shape, window, stride, padding)
  x = x_BxHxWxC
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                constant_values=-jnp.inf)
  return _max_pool(x, window, stride)


def _windows(x_BxHxWxC, window: int, stride: int) -> list[jax.Array]:
  """The window² strided slices [B, oh, ow, C], tap (i, j) at index i·window + j."""
  _, h, w, _ = x_BxHxWxC.shape
  oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
  return [x_BxHxWxC[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
          for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x_BxHxWxC, window: int, stride: int):
  return functools.reduce(jnp.maximum, _windows(x_BxHxWxC, window, stride))


def _max_pool_fwd(x_BxHxWxC, window, stride):
  maximum = tap = None
  for index, part in enumerate(_windows(x_BxHxWxC, window, stride)):
    if maximum is None:
      maximum, tap = part, jnp.zeros(part.shape, jnp.int8)
    else:
      larger = part > maximum  # strict: ties keep the first tap
      maximum, tap = jnp.where(larger, part, maximum), jnp.where(larger, jnp.int8(index), tap)
  # XLA still recomputes part of the chain inside the backward pass; the barrier limits it.
  maximum, tap = jax.lax.optimization_barrier((maximum, tap))
  return maximum, (tap, x_BxHxWxC.shape)


def _max_pool_bwd(window, stride, residuals, dy_BxhxwxC):
  """Input row stride·m + a gets the output rows m − k through taps i = a + stride·k: each
  phase (a, c) of the input grid is a sum of shifted, masked dy; the phases interleave."""
  tap, (b, h, w, c) = residuals
  oh, ow = dy_BxhxwxC.shape[1:3]
  mh, mw = -(-h // stride), -(-w // stride)
  zero = jnp.zeros((), dy_BxhxwxC.dtype)
  phases = []
  for a in range(stride):
    for d in range(stride):
      total = jnp.zeros((b, mh, mw, c), dy_BxhxwxC.dtype)
      for k in range(-(-(window - a) // stride)):
        for l in range(-(-(window - d) // stride)):
          picked = jnp.where(tap == (a + stride * k) * window + d + stride * l, dy_BxhxwxC, zero)
          total = total + jnp.pad(picked, ((0, 0), (k, mh - oh - k), (l, mw - ow - l), (0, 0)))
      phases.append(total)
  dx = jnp.stack(phases, axis=3).reshape(b, mh, mw, stride, stride, c)
  dx = dx.transpose(0, 1, 3, 2, 4, 5).reshape(b, stride * mh, stride * mw, c)
  return (dx[:, :h, :w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
