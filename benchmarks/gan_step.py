"""Examples/sec of one DCGAN train step (D on real + fake, then G; Adam), hashjax vs PyTorch.

  python benchmarks/gan_step.py [--image_size=64] [--batch=64] [--steps=5] [--rounds=4]
      [--no_torch] [--peak_tflops=P]

Same architecture in both (the reference DCGAN: ngf = ndf = 64, nz = 100, 3 channels), same
losses (BCE, non-saturating G), same optimizers. PyTorch is measured when `torch` is
installed (`pip install torch==2.13.0`); the ratio printed is hashjax / PyTorch. The two are
timed in alternating rounds of `--steps` steps each, and the medians over rounds are
reported, so that this VM's drifting speed (±15% over minutes) falls on both sides. Also times
hashjax with flax's `nn.ConvTranspose` generator (lax.conv_transpose), to show what the
generator's XLA:CPU kernels (`hashjax.ops.strided_conv_transpose`) buy on CPU; on other
backends the generator runs lax.conv_transpose either way. Prints the step's FLOPs (XLA's cost
analysis) and TFLOP/s, and its FLOP utilisation against `--peak_tflops` when given;
`--no_torch` skips PyTorch (a CPU baseline, no match for a GPU step).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
import rounds  # benchmarks/rounds.py

from configs import dcgan_digits
from hashjax.gan import step as gan_step_lib
from hashjax.gan.config import gan_config
from hashjax.models import dcgan


def hashjax_step(size, batch, conv_transpose=False):
  """(a warmed-up (compiled) callable running one hashjax DCGAN train step, its FLOPs or
  None)."""
  c = dcgan_digits.get_config()
  c.image_size, c.ngf, c.ndf, c.batch_size = size, 64, 64, batch
  cfg = gan_config(c)
  spec = gan_step_lib.DataSpec(channels=3, num_classes=0)
  original = dcgan.StridedConvTranspose
  if conv_transpose:  # the straightforward generator, for comparison
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    dcgan.StridedConvTranspose = lambda f, use_bias=True: nn.ConvTranspose(
        f, (4, 4), (2, 2), padding=((2, 2), (2, 2)), use_bias=use_bias,
        kernel_init=dcgan.conv_init)
  try:
    state = gan_step_lib.create_state(cfg, spec, jax.random.PRNGKey(0))
    step = gan_step_lib.make_train_step(cfg, 0)
    batch = {'image': np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
             'label': np.zeros(batch, np.int32)}
    rng = jax.random.PRNGKey(1)
    step = step.lower(state, batch, rng).compile()  # compiled once: run and cost-analysed
    holder = {'state': state}

    def run():
      holder['state'], metrics = step(holder['state'], batch, rng)
      jax.block_until_ready(metrics)
    run()
    run()  # warm up
    return run, rounds.compiled_flops(step)
  finally:
    dcgan.StridedConvTranspose = original


def torch_step(size, batch):
  """A warmed-up callable running one PyTorch DCGAN train step."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  stages = {32: 3, 64: 4}[size]
  ngf = ndf = 64
  g_layers, width = [], ngf * 2 ** (stages - 1)
  g_layers += [nn.ConvTranspose2d(100, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
  for _ in range(stages - 1):
    g_layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                 nn.BatchNorm2d(width // 2), nn.ReLU(True)]
    width //= 2
  g_layers += [nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), nn.Tanh()]
  d_layers = [nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
  for i in range(1, stages):
    d_layers += [nn.Conv2d(ndf * 2 ** (i - 1), ndf * 2 ** i, 4, 2, 1, bias=False),
                 nn.BatchNorm2d(ndf * 2 ** i), nn.LeakyReLU(0.2, True)]
  d_layers += [nn.Conv2d(ndf * 2 ** (stages - 1), 1, 4, 1, 0, bias=False)]
  g, d = nn.Sequential(*g_layers), nn.Sequential(*d_layers)
  opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
  opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
  bce = nn.BCEWithLogitsLoss()
  real = torch.rand(batch, 3, size, size) * 2 - 1
  ones, zeros = torch.ones(batch), torch.zeros(batch)

  def run():
    d.zero_grad()
    fake = g(torch.randn(batch, 100, 1, 1))
    loss_d = bce(d(real).view(-1), ones) + bce(d(fake.detach()).view(-1), zeros)
    loss_d.backward()
    opt_d.step()
    g.zero_grad()
    loss_g = bce(d(fake).view(-1), ones)
    loss_g.backward()
    opt_g.step()
  run()
  run()
  return run


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=5, help='steps per round')
  parser.add_argument('--rounds', type=int, default=4)
  parser.add_argument('--skip_conv_transpose', action='store_true')
  parser.add_argument('--no_torch', action='store_true', help='hashjax only')
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help="one device's peak TFLOP/s (float32), for the FLOP utilisation")
  args = parser.parse_args()
  size, batch = args.image_size, args.batch
  print(f'DCGAN {size}x{size}, batch {batch}, D+G step, devices: {jax.devices()}')
  ours, flops = hashjax_step(size, batch)
  if not args.skip_conv_transpose:
    plain, _ = hashjax_step(size, batch, conv_transpose=True)
    t_ct = rounds.seconds_per_step(plain, max(2, args.steps // 5))
    t = rounds.seconds_per_step(ours, args.steps)
    print(f'hashjax (nn.ConvTranspose G):  {batch / t_ct:8.1f} examples/s; the strided layers '
          f'are {t_ct / t:.1f}x faster')
  torch = None
  if not args.no_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      pass
  theirs = None
  if torch is not None:
    torch.set_num_threads(os.cpu_count())
    theirs = torch_step(size, batch)

  def report(r, seconds):
    line = f'round {r + 1}: hashjax {batch / seconds["hashjax"]:6.1f} ex/s'
    if 'torch' in seconds:
      line += (f' | PyTorch {batch / seconds["torch"]:6.1f} ex/s | ratio '
               f'{seconds["torch"] / seconds["hashjax"]:.2f}x')
    print(line, flush=True)

  times = rounds.alternating_rounds({'hashjax': ours, 'torch': theirs}, args.steps,
                                    args.rounds, on_round=report)
  t = float(np.median(times['hashjax']))
  print(f'hashjax (strided layers G):   {batch / t:8.1f} examples/s ({t * 1e3:.0f} ms/step, '
        f'median of {args.rounds} rounds; {rounds.flops_summary(flops, t, args.peak_tflops)})')
  if torch is None:
    print('PyTorch not installed (pip install torch==2.13.0) or --no_torch: no comparison')
    return
  t_torch = float(np.median(times['torch']))
  ratio, low, high = rounds.ratio_summary(times['hashjax'], times['torch'])
  print(f'PyTorch {torch.__version__}: {batch / t_torch:8.1f} examples/s ({t_torch * 1e3:.0f} ms/step, '
        f'{torch.get_num_threads()} threads)')
  print(f'ratio hashjax / PyTorch: {ratio:.2f}x (median of the rounds; range '
        f'{low:.2f}-{high:.2f}x)')


if __name__ == '__main__':
  main()
