"""Updating a trained model with new classes: MNIST digits 0–6 first, 7–9 later (docs/UPDATE.md).

  # 1. the base run: digits 0–6 only, 1,000 steps; fisher.npz written at its end
  python train.py --config=configs/hashnet_update_mnist.py:base \\
      --config.dataset=npz:PATH/mnist_t10k.npz --workdir=runs/mnist_base
  # 2. the update: 250 steps on digits 7–9 alone, the base model as a Laplace prior, the
  #    indexed codes kept (only new items encoded), the code anchor on
  python train.py --config=configs/hashnet_update_mnist.py:update \\
      --config.dataset=npz:PATH/mnist_t10k.npz --workdir=runs/mnist_update

The protocol of configs/hashnet_mnist.py (100 queries and 500 training images per class, the
rest of the test set the database, mAP@1000), batch 64, small CNN; λ = 10⁶ is what
`python -m hashjax.experiments.update` chose on validation at 32 bits. For sample-incremental
updates set --config.split.new_classes=None --config.split.later_fraction=0.5 on both runs.
"""

from configs import hashnet_mnist


def get_config(stage: str = 'update'):
  """stage: 'base' (the old data) or 'update' (the new data, from runs/mnist_base)."""
  if stage not in ('base', 'update'):
    raise ValueError(f"config argument {stage!r}; accepted: base, update")
  c = hashnet_mnist.get_config()
  c.bits = 32
  c.batch_size = 64
  c.split.new_classes = '7,8,9'
  if stage == 'base':
    c.num_steps = 1000
    c.split.stage = 'old'
    c.save_fisher = True
  else:
    c.num_steps = 250
    c.split.stage = 'new'
    c.updating.from_workdir = 'runs/mnist_base'
    c.updating.prior = 'laplace'
    c.updating.prior_weight = 1e6
    c.updating.database_codes = 'keep'
    c.updating.code_anchor_weight = 1.0
  c.eval_every = c.checkpoint_every = c.num_steps
  c.log_every = 25
  return c
