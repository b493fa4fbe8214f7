"""DCGAN on the MNIST test set (npz source), 28×28 padded to 32×32.

  python gan.py --config=configs/dcgan_mnist.py \
      --config.dataset=npz:PATH/mnist_t10k.npz --workdir=runs/dcgan_mnist

The data file is not part of the repository: pass it with --config.dataset=npz:PATH (without
it the run stops with a one-line error naming the missing path).
"""

from configs import dcgan_digits


def get_config():
  c = dcgan_digits.get_config()
  c.dataset = 'npz:'  # the MNIST test set: --config.dataset=npz:PATH
  c.ngf = 64
  c.ndf = 64
  c.num_steps = 5000
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.sample_every = 500
  return c
