"""DCGAN on anime character faces, 64×64, with the reference DCGAN's hyperparameters.

Get a face dataset first (none ships with hashjax): e.g. the "Anime Face Dataset" on Kaggle
(~63,000 face crops; `kaggle datasets download -d splcher/animefacedataset`, unzip to
~/data/anime) or Danbooru portrait crops. Any folder of jpg/png/webp files works; subfolders,
if any, become classes for --config.conditional=True. Then:

  python gan.py --config=configs/dcgan_anime.py --config.dataset=folder:$HOME/data/anime \
      --workdir=runs/dcgan_anime

The first pass decodes, center-crops and resizes every image in background threads and
caches them in <workdir>/data_cache; 12,000 steps of batch 128 ≈ 25 epochs of 63k images
(a GPU is advised).
"""

from configs import dcgan_digits


def get_config():
  c = dcgan_digits.get_config()
  c.dataset = 'folder:data/anime'
  c.image_size = 64
  c.ngf = 64
  c.ndf = 64
  c.batch_size = 128
  c.num_steps = 12_000
  c.log_every = 100
  c.eval_every = 2000
  c.checkpoint_every = 1000
  c.sample_every = 500
  return c
