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

Max pooling, dense layers and ResNet's convolutions (for their 1×1 kernel gradients) go
through `hashjax.ops`: XLA:CPU kernels on CPU, flax's layers elsewhere, the same parameters
either way.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from hashjax import ops

BACKBONES = ('small_cnn', 'alexnet', 'resnet18', 'resnet50')


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
      x = ops.max_pool(x, 2, 2)
    x = x.reshape(x.shape[0], -1)
    return nn.relu(ops.Dense(self.features, dtype=self.dtype)(x))


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
    pool = functools.partial(ops.max_pool, window=3, stride=2)
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
      x = nn.relu(ops.Dense(4096, dtype=self.dtype)(x))
    return x


class BasicBlock(nn.Module):
  filters: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype)
    conv = functools.partial(ops.Conv, use_bias=False, dtype=self.dtype)
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
    conv = functools.partial(ops.Conv, use_bias=False, dtype=self.dtype)
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
    x = ops.Conv(64, (7, 7), (2, 2), padding=3, use_bias=False, dtype=self.dtype,
                 name='conv1')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                     name='bn1')(x)
    x = nn.relu(x)
    x = ops.max_pool(x, 3, 2, padding=1)
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
