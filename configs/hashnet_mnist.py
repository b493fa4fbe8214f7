"""HashNet, small CNN on the MNIST test set (npz source, 28×28), 48 bits, mAP@1000.

  python train.py --config=configs/hashnet_mnist.py \
      --config.dataset=npz:PATH/mnist_t10k.npz --workdir=runs/hashnet_mnist

The data file is not part of the repository: pass it with --config.dataset=npz:PATH (without
it the run stops with `train.py: error: dataset 'npz:' names no npz source; ...`).
Protocol (as in the HashNet reproduction): 1,000 queries (100 per class), the other 9,000
images are the database, 5,000 of them (500 per class) the training set.
Any npz with keys `image` (uint8 [N,28,28]) and `label` works the same way.
"""

from configs import hashnet_digits


def get_config():
  c = hashnet_digits.get_config()
  c.dataset = 'npz:'  # the MNIST test set: --config.dataset=npz:PATH
  c.bits = 48
  c.batch_size = 128
  c.num_steps = 3000
  c.lr_decay_every = 1000
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.map_topk = 1000
  c.split.query_per_class = 100
  c.split.train_per_class = 500
  return c
