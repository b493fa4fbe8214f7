"""Examples/sec of the HashNet train step, hashjax vs PyTorch on the same machine.

  python benchmarks/train_step.py [--models=small_cnn,alexnet,resnet50] [--steps=5] [--rounds=4]
      [--dtype=bfloat16] [--batch=N] [--no_torch] [--peak_tflops=P]

For each model (small_cnn 32 px batch 256, alexnet 224 px batch 32, resnet50 224 px batch 16
on CPU) it times hashjax's jitted step (HashNet balanced pairwise loss, SGD momentum 0.9 +
weight decay, hash layer lr ×10) and, when torch is installed (`pip install torch==2.13.0`),
a PyTorch implementation of the identical network, loss and optimizer. The two are timed in
alternating rounds of `--steps` steps, so that this VM's drifting speed falls on both; it
prints the medians over rounds and the median of the per-round ratios. It also reports
hashjax's compile time, the step's FLOPs (XLA's cost analysis of the compiled step, one
device's program; a multiply-add counts 2) and TFLOP/s, its model FLOP utilisation against
`--peak_tflops` (one device's peak) when given, and the input pipeline's examples/sec
(indices → uint8 images → float → device) against the step's. `--batch` replaces every
model's batch; `--no_torch` skips PyTorch (a CPU baseline, no match for a GPU step).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
import rounds  # benchmarks/rounds.py

from configs import hashnet_digits
from hashjax.data import base as data_lib
from hashjax.hashing import step as hash_step
from hashjax.hashing.config import hash_config
from hashjax.runtime import parallel, plumbing

SETTINGS = {  # model: (image size, channels, batch)
    'small_cnn': (32, 3, 256),
    'alexnet': (224, 3, 32),
    'resnet50': (224, 3, 16),
}
BITS = 48


def _config(model, batch, dtype='float32'):
  c = hashnet_digits.get_config()
  c.backbone, c.bits, c.batch_size = model, BITS, batch
  c.optimizer, c.learning_rate, c.weight_decay, c.momentum = 'sgd', 1e-3, 5e-4, 0.9
  c.compute_dtype = dtype
  return hash_config(c)


def hashjax_step(model, dtype='float32'):
  """(a warmed-up callable running one hashjax train step, its compile time in s, its FLOPs
  per step or None)."""
  size, channels, batch = SETTINGS[model]
  cfg = _config(model, batch, dtype)
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  local = {'image': rng.uniform(-1, 1, (batch, size, size, channels)).astype(np.float32),
           'label': rng.integers(0, 10, batch)}
  t0 = time.perf_counter()
  state = hash_step.create_train_state(cfg, (size, size, channels), jax.random.PRNGKey(0), mesh)
  step = hash_step.make_train_step(cfg, mesh)
  key = parallel.replicate(np.asarray(jax.random.PRNGKey(1)), mesh)
  batch_dev = parallel.global_batch(local, mesh)
  step = step.lower(state, batch_dev, key).compile()  # compiled once: run and cost-analysed
  holder = {'state': state}

  def run():
    holder['state'], metrics = step(holder['state'], batch_dev, key)
    jax.block_until_ready(metrics)

  run()
  compile_s = time.perf_counter() - t0
  run()
  return run, compile_s, rounds.compiled_flops(step)


def pipeline_rate(model, steps):
  """Examples/sec of the input path alone: batch indices → images → float → device."""
  size, channels, batch = SETTINGS[model]
  n = 4 * batch
  source = data_lib.ArraySource(
      np.random.default_rng(0).integers(0, 256, (n, size, size, channels), np.uint8),
      np.arange(n) % 10)
  mesh = parallel.make_mesh()
  counter = {'step': 0}

  def run():
    idx = plumbing.batch_indices(n, batch, counter['step'], 0)
    counter['step'] += 1
    local = {'image': data_lib.to_float(source.images(idx)), 'label': source.labels[idx]}
    jax.block_until_ready(parallel.global_batch(local, mesh))

  run()
  return batch / rounds.seconds_per_step(run, steps)


# -- PyTorch twins of the same networks, loss and optimizer ---------------------------------

def _torch_resnet50(channels):
  """torchvision's ResNet-50 layout without its classifier (2048 features)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
      super().__init__()
      cout = 4 * width
      self.body = nn.Sequential(
          nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
          nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
          nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
      self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                   if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
      return torch.relu(self.body(x) + self.down(x))

  class ResNet50(nn.Module):
    def __init__(self):
      super().__init__()
      layers = [nn.Conv2d(channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1)]
      cin = 64
      for stage, blocks in enumerate((3, 4, 6, 3)):
        for b in range(blocks):
          layers.append(Bottleneck(cin, 64 * 2**stage, 2 if stage and not b else 1))
          cin = 4 * 64 * 2**stage
      layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
      self.features = nn.Sequential(*layers)

    def forward(self, x):
      return self.features(x)

  return ResNet50()


def _torch_backbone(model, channels, size):
  """The PyTorch twin of the hashjax backbone `model` (without the hash layer)."""
  from torch import nn  # pylint: disable=g-import-not-at-top

  class SmallCNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
          nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
          nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
          nn.Linear(64 * (size // 4) ** 2, 256), nn.ReLU())

    def forward(self, x):
      return self.features(x)

  class AlexNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(channels, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
          nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
          nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1),
          nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
          nn.AdaptiveAvgPool2d(6), nn.Flatten(), nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(),
          nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU())

    def forward(self, x):
      return self.features(x)

  if model == 'resnet50':
    return _torch_resnet50(channels)
  return {'small_cnn': SmallCNN, 'alexnet': AlexNet}[model]()


def torch_step(model):
  """A warmed-up callable running one PyTorch train step of the same network."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  size, channels, batch = SETTINGS[model]
  backbone = _torch_backbone(model, channels, size)
  features = {'small_cnn': 256, 'alexnet': 4096, 'resnet50': 2048}[model]
  hash_layer = nn.Linear(features, BITS)
  opt = torch.optim.SGD([{'params': backbone.parameters(), 'lr': 1e-3},
                         {'params': hash_layer.parameters(), 'lr': 1e-2}],
                        momentum=0.9, weight_decay=5e-4)
  x = torch.rand(batch, channels, size, size) * 2 - 1
  y = torch.randint(0, 10, (batch,))
  alpha = 10.0 / BITS

  def hashnet_loss(h, labels):
    s = (labels[:, None] == labels[None, :]).float()
    off = 1 - torch.eye(len(labels))
    theta = alpha * h @ h.T
    nll = nn.functional.softplus(theta) - s * theta
    sim, dis = s * off, (1 - s) * off
    return (sim * nll).sum() / sim.sum().clamp(min=1) + (dis * nll).sum() / dis.sum().clamp(min=1)

  def run():
    opt.zero_grad()
    loss = hashnet_loss(torch.tanh(hash_layer(backbone(x))), y)
    loss.backward()
    opt.step()

  run()
  run()
  return run


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--models', default='small_cnn,alexnet,resnet50')
  parser.add_argument('--steps', type=int, default=5, help='steps per round')
  parser.add_argument('--rounds', type=int, default=4)
  parser.add_argument('--dtype', default='float32', help='compute dtype (bfloat16 on GPU/TPU)')
  parser.add_argument('--batch', type=int, default=0, help="every model's batch (0: defaults)")
  parser.add_argument('--no_torch', action='store_true', help='hashjax only')
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help="one device's peak TFLOP/s at --dtype, for the FLOP utilisation")
  args = parser.parse_args()
  if args.batch:
    SETTINGS.update({m: (size, ch, args.batch) for m, (size, ch, _) in SETTINGS.items()})
  torch = None
  if args.no_torch:
    print('--no_torch: hashjax only')
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(os.cpu_count())
    except ImportError:
      print('PyTorch not installed (pip install torch==2.13.0): hashjax only')
  print(f'devices: {jax.devices()}')
  for model in args.models.split(','):
    size, _, batch = SETTINGS[model]
    ours, compile_s, flops = hashjax_step(model, args.dtype)
    theirs = torch_step(model) if torch is not None else None
    times = rounds.alternating_rounds({'hashjax': ours, 'torch': theirs}, args.steps, args.rounds)
    t = float(np.median(times['hashjax']))
    line = (f'{model:9s} {size}px batch {batch} {args.dtype}: hashjax {batch / t:8.1f} ex/s '
            f'(compile {compile_s:.1f} s; {rounds.flops_summary(flops, t, args.peak_tflops)})')
    if theirs is not None:
      t_torch = float(np.median(times['torch']))
      ratio, low, high = rounds.ratio_summary(times['hashjax'], times['torch'])
      line += (f' | PyTorch {batch / t_torch:8.1f} ex/s | ratio {ratio:.2f}x '
               f'(rounds {low:.2f}-{high:.2f}x)')
    rate = pipeline_rate(model, args.steps)
    line += f' | input pipeline {rate:9.0f} ex/s = {rate * t / batch:.1f}x the step'
    print(line, flush=True)


if __name__ == '__main__':
  main()
