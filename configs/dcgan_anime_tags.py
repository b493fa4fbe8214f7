"""DCGAN on the anime faces, 64×64, conditioned on hair and eye colour (one embedding each).

  git clone --depth 1 https://github.com/antoncoding/Deep_Learning_GAN data/Deep_Learning_GAN
  python -m hashjax.commands.anime_faces data/Deep_Learning_GAN      # writes hair_eye.csv
  python gan.py --config=configs/dcgan_anime_tags.py --workdir=runs/dcgan_anime_tags
  python gan.py --mode=sample --workdir=runs/dcgan_anime_tags --attributes=hair=blue,eye=red

Trains on the 11,418 faces tagged with one hair and one eye colour (the untagged ones are
dropped: --config.unlabelled=keep trains on all 33,431, the untagged with unknown attributes).
samples/attributes_<step>.png is the grid of hair colours (rows) × eye colours (columns) from
one fixed noise vector. Before training, an attribute classifier is trained on the tagged faces
(<workdir>/attribute_classifier/); every evaluation then reports its balanced accuracy on
held-out real faces and on samples generated for each hair and eye colour.
Half the reference DCGAN's width (ngf = ndf = 32), so that 5,000 steps of batch 64 fit in
under an hour on 2 CPU cores: ~6 min for the classifier, then ~48 min for the GAN (1.72 steps/s
with its evaluations, measured on an idle machine; docs/ANIME.md); one GPU: not measured (none
was at hand).
"""

from configs import dcgan_anime


def get_config():
  c = dcgan_anime.get_config()
  c.labels = 'data/Deep_Learning_GAN/hair_eye.csv'
  c.conditional = True
  c.ngf = 32
  c.ndf = 32
  c.batch_size = 64
  c.num_steps = 5000
  c.log_every = 50
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.sample_every = 500
  c.classifier_steps = 4000  # the attribute classifier (~6 min): hair/eye accuracy of samples
  return c
