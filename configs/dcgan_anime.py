"""DCGAN on anime character faces, 64×64, unconditional, with the reference DCGAN's
hyperparameters.

The public anime-face set (33,431 face crops, 96×96; none ships with hashjax):

  git clone --depth 1 https://github.com/antoncoding/Deep_Learning_GAN data/Deep_Learning_GAN
  python gan.py --config=configs/dcgan_anime.py --workdir=runs/dcgan_anime

Any folder of jpg/png/webp files works (--config.dataset=folder:PATH); subfolders, if any,
become classes for --config.conditional=True, and a label table (--config.labels=FILE.csv,
hashjax/data/label_table.py) gives attributes instead (configs/dcgan_anime_tags.py). The first pass
decodes, center-crops and resizes every image and caches them in <workdir>/data_cache.
12,000 steps of batch 128 ≈ 46 epochs of the 33k faces: about 7 hours on 2 CPU cores (the
full-width step runs ~63 examples/s there, docs/PERFORMANCE.md); one GPU: not measured.
"""

from configs import dcgan_digits


def get_config():
  c = dcgan_digits.get_config()
  c.dataset = 'folder:data/Deep_Learning_GAN/faces'
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
