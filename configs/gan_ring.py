"""MLP GAN on the 2-D ring of 8 Gaussians (radius 2, std 0.02): the mode-collapse benchmark of
VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018).

  python gan.py --config=configs/gan_ring.py --workdir=runs/gan_ring

PacGAN's networks (G: 4 × 400 ReLU + BatchNorm, z ∈ R², D: 3 × 200 linear maxout with 5
pieces; Adam 1e-4, β1 0.5, batch 100), trained for far fewer steps than PacGAN's 400 epochs
of 100,000 points so a run fits a CPU. eval.json reports modes captured and the high-quality
fraction of 2,500 samples, the held-out JSD estimate and the exact JSD against a KDE of the
generator (docs/JSD.md); samples/ holds scatter plots.
"""

from configs import dcgan_digits


def get_config():
  c = dcgan_digits.get_config()
  c.model = 'mlp'
  c.dataset = 'ring8'
  c.nz = 2
  c.ngf = 400  # generator hidden width (4 layers)
  c.ndf = 200  # discriminator hidden width (3 maxout layers)
  c.batch_size = 100
  c.num_steps = 5000
  c.learning_rate = 1e-4
  c.beta1 = 0.5
  c.log_every = 100
  c.eval_every = 1000
  c.checkpoint_every = 5000
  c.sample_every = 1000
  c.eval_holdout = 2500  # fresh real points for the estimate
  c.eval_steps = 1000
  return c
