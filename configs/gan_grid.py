"""MLP GAN on the 2-D 5×5 grid of 25 Gaussians (means {−4, −2, 0, 2, 4}², std 0.05): the
mode-collapse benchmark of VEEGAN and PacGAN. Networks and outputs as configs/gan_ring.py.

  python gan.py --config=configs/gan_grid.py --workdir=runs/gan_grid
"""

from configs import gan_ring


def get_config():
  c = gan_ring.get_config()
  c.dataset = 'grid25'
  return c
