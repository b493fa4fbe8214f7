"""DCGAN on scikit-learn's bundled 8×8 digits, upscaled to 32×32 (the default; offline, CPU).

  python gan.py --config=configs/dcgan_digits.py --workdir=runs/dcgan_digits
  python gan.py --mode=sample --workdir=runs/dcgan_digits --num_samples=64

Class-conditional variant: --config.conditional=True (one column of the grid per digit).
Narrower than the reference DCGAN (ngf = ndf = 32) so it trains in minutes on 2 CPU cores.
Every eval_every steps a fresh classifier estimates JSD(data ‖ EMA generator) on eval_holdout
held-out digits (eval.jsonl, jsd_curve.png; see docs/JSD.md).
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.model = 'dcgan'  # or 'mlp' for the 2-D toy data (configs/gan_ring.py, gan_grid.py)
  c.dataset = 'digits'
  c.image_size = 32
  c.nz = 100
  c.ngf = 32
  c.ndf = 32
  c.conditional = False
  c.batch_size = 64
  c.num_steps = 2000
  c.learning_rate = 2e-4
  c.beta1 = 0.5
  c.beta2 = 0.999
  c.gan_loss = 'non_saturating'  # or 'minimax'
  c.label_smoothing = 0.0  # one-sided: real targets 1 - label_smoothing
  c.n_critic = 1
  c.ema_decay = 0.999
  c.seed = 0
  c.log_every = 50
  c.eval_every = 500  # JSD estimate of EMA samples vs held-out real (eval.jsonl)
  c.eval_holdout = 256  # real images kept out of training for it; 0 disables the estimate
  c.eval_steps = 300  # steps of the estimator's fresh classifier (Adam, batch 256)
  c.checkpoint_every = 500
  c.sample_every = 500
  c.num_samples = 64
  # A label table (CSV, hashjax/data/label_table.py) for a folder: dataset: with conditional=True
  # the GAN is conditioned on its attributes (e.g. hair and eye colour).
  c.labels = config_dict.placeholder(str)
  c.unlabelled = 'drop'  # images without a row in labels: 'drop' or 'keep' (unknown)
  c.collapse_window = 5  # logged steps of D winning outright before a warning (0: never)
  c.classifier_steps = 0  # > 0 (with labels): an attribute classifier scores the samples

  c.checkpoint = config_dict.ConfigDict()
  c.checkpoint.max_to_keep = 2
  c.checkpoint.max_bytes = config_dict.placeholder(int)
  c.checkpoint.best_metric = config_dict.placeholder(str)
  c.checkpoint.async_save = True
  return c
