"""Feature extractors for HashNet (flax linen, NHWC images).

Each backbone maps images [B, H, W, C] (float, roughly zero-mean unit-variance) to
features [B, F]. `train` switches dropout and BatchNorm batch statistics.

* `small_cnn` (inputs up to 32 px; F = 256):
    Conv3×3(32) ReLU, Conv3×3(32) ReLU, MaxPool2×2,
    Conv3×3(64) ReLU, Conv3×3(64) ReLU, MaxPool2×2,
    Flatten, Dense(256) ReLU.   ('SAME' padding; 8 px → 2×2×64, 28 px → 7×7×64 before Flatten.)
* `alexnet` (torchvision's AlexNet; 224 px; F = 4096): conv 64@11/4 pad 2, pool 3/2,
  conv 192@5 pad 2, pool 3/2, conv 384@3, conv 256@3, conv 256@3, pool 3/2, adaptive average
  pool to 6×6, dropout, fc 4096, ReLU, dropout, fc 4096, ReLU.
* `resnet18` / `resnet50` (torchvision's ResNet v1.5, stride in the 3×3 conv; F = 512 / 2048):
  conv 64@7/2, BN, ReLU, maxpool 3/2, four stages, global average pool. BatchNorm keeps running
  averages in the `batch_stats` collection.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hashjax.models.conv import conv_general_dilated
from hashjax.models.dense import Dense

BACKBONES = ('small_cnn', 'alexnet', 'resnet18', 'resnet50')

# ResNet's convolutions: XLA's, with a matmul kernel gradient for its 1×1 convolutions on CPU
# (conv.py; ResNet-50 step 1.11× against XLA's kernel gradient everywhere, 0.78× with the
# matmul form for the 3×3 and 7×7 convolutions too). The small CNN and AlexNet have no 1×1
# convolutions and use plain `nn.Conv`. (ResNet-18 was not measured; it shares this code.)
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def max_pool(x_BxHxWxC, window: int, stride: int, padding: int = 0):
  """Max pooling [B, H, W, C] → [B, (H + 2·padding − window) // stride + 1, …, C].

  The same values and gradient as `nn.max_pool(x, (window,)*2, (stride,)*2, padding)`
  (padding with −inf; the gradient goes to the first maximum of each window, as in PyTorch),
  but faster on CPU: the forward pass compares the window² strided slices in turn, keeping
  each window's maximum and the index of its first maximum (an int8 array) for the backward
  pass, which sums the masked output gradient into the input grid phase by phase. XLA's
  select-and-scatter gradient was 1.2–2.7× slower on CPU, and differentiating a plain chain of
  maxima let XLA recompute it inside the backward pass (AlexNet's first pool, forward +
  backward: 218 ms that way, 112 ms with an argmax over stacked taps, 40 ms with this).
  """
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
  # XLA still recomputes the chain inside the backward pass's fusion, but with the barrier
  # far less of it: AlexNet's three pool gradients took 117 ms a step with it, 204 without.
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


class SmallCNN(nn.Module):
  """Four 3×3 convolutions and one dense layer, for small images (≤ 32 px)."""
  features: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train
    for width in (32, 64):
      x = nn.relu(nn.Conv(width, (3, 3), dtype=self.dtype)(x))
      x = nn.relu(nn.Conv(width, (3, 3), dtype=self.dtype)(x))
      x = max_pool(x, 2, 2)
    x = x.reshape(x.shape[0], -1)
    return nn.relu(Dense(self.features, dtype=self.dtype)(x))


def adaptive_avg_pool(x, output_size: tuple[int, int]):
  """torch.nn.AdaptiveAvgPool2d for NHWC inputs with static shapes."""
  _, h, w, _ = x.shape
  oh, ow = output_size
  if (h, w) == (oh, ow):
    return x
  rows = []
  for i in range(oh):
    h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
    cols = []
    for j in range(ow):
      w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
      cols.append(x[:, h0:h1, w0:w1, :].mean(axis=(1, 2)))
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)


class AlexNet(nn.Module):
  """torchvision.models.alexnet without its last (classification) layer."""
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    pool = functools.partial(max_pool, window=3, stride=2)
    conv = functools.partial(nn.Conv, dtype=self.dtype)
    x = pool(nn.relu(conv(64, (11, 11), (4, 4), padding=2)(x)))
    x = pool(nn.relu(conv(192, (5, 5), padding=2)(x)))
    x = nn.relu(conv(384, (3, 3), padding=1)(x))
    x = nn.relu(conv(256, (3, 3), padding=1)(x))
    x = pool(nn.relu(conv(256, (3, 3), padding=1)(x)))
    x = adaptive_avg_pool(x, (6, 6))
    # torchvision flattens NCHW; transposing keeps its fc weights usable in this layout.
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    for _ in range(2):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(Dense(4096, dtype=self.dtype)(x))
    return x


class BasicBlock(nn.Module):
  filters: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype)
    residual = x
    y = conv(self.filters, (3, 3), self.strides, padding=1)(x)
    y = nn.relu(norm()(y))
    y = conv(self.filters, (3, 3), padding=1)(y)
    y = norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = conv(self.filters, (1, 1), self.strides, name='downsample_conv')(x)
      residual = norm(name='downsample_bn')(residual)
    return nn.relu(y + residual)


class Bottleneck(nn.Module):
  filters: int
  strides: int = 1
  expansion: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype)
    residual = x
    y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
    y = conv(self.filters, (3, 3), self.strides, padding=1)(y)
    y = nn.relu(norm()(y))
    y = conv(self.filters * self.expansion, (1, 1))(y)
    y = norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = conv(self.filters * self.expansion, (1, 1), self.strides,
                      name='downsample_conv')(x)
      residual = norm(name='downsample_bn')(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """torchvision ResNet (v1.5) trunk; BatchNorm momentum 0.9 equals PyTorch's 0.1."""
  stage_sizes: Sequence[int]
  block: type[nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = Conv(64, (7, 7), (2, 2), padding=3, use_bias=False, dtype=self.dtype,
             name='conv1')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                     name='bn1')(x)
    x = nn.relu(x)
    x = max_pool(x, 3, 2, padding=1)
    for stage, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        strides = 2 if stage > 0 and b == 0 else 1
        x = self.block(64 * 2**stage, strides, dtype=self.dtype,
                       name=f'layer{stage + 1}_{b}')(x, train=train)
    return x.mean(axis=(1, 2))


def make_backbone(backbone: str, **module_kwargs) -> nn.Module:
  """Returns the backbone module called `backbone` (one of BACKBONES); `module_kwargs` go to its
  constructor (e.g. `name=` for its parameter scope)."""
  if backbone == 'small_cnn':
    return SmallCNN(**module_kwargs)
  if backbone == 'alexnet':
    return AlexNet(**module_kwargs)
  if backbone == 'resnet18':
    return ResNet(stage_sizes=(2, 2, 2, 2), block=BasicBlock, **module_kwargs)
  if backbone == 'resnet50':
    return ResNet(stage_sizes=(3, 4, 6, 3), block=Bottleneck, **module_kwargs)
  raise ValueError(f'unknown backbone {backbone!r}; accepted: {", ".join(BACKBONES)}')
