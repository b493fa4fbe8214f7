"""HashNet on CIFAR-10 with AlexNet at 224 px: the common CIFAR-10 hashing protocol.

  tfds build cifar10 --file_format=array_record      # once, on a machine with network
  python train.py --config=configs/hashnet_cifar10.py --workdir=runs/hashnet_cifar10

Protocol: all 60,000 images (tfds train+test); 100 queries per class (1,000), the other
59,000 are the database, 500 training images per class (5,000) drawn from it; mAP over the
whole database. Training: the paper's SGD (momentum 0.9, weight decay 5e-4, hash layer
lr ×10, lr ×0.5 every 2,000 steps, 10,000 steps) and β schedule (γ = 0.005, every 200 steps).
Meant for a GPU. The paper fine-tunes an ImageNet-pretrained AlexNet: convert torchvision's
weights once (`python -m hashjax.commands.pretrained alexnet-owt-7be5be79.pth alexnet.npz`)
and add `--config.pretrained=alexnet.npz` (ResNet-50 for the ImageNet-100 config).
"""

from configs import hashnet_digits


def get_config():
  c = hashnet_digits.get_config()
  c.dataset = 'tfds:cifar10:train+test'
  c.image_size = 224
  c.backbone = 'alexnet'
  c.bits = 48
  c.batch_size = 64
  c.num_steps = 10_000
  c.optimizer = 'sgd'
  c.learning_rate = 3e-4
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_decay_every = 2000
  c.lr_decay_factor = 0.5
  c.log_every = 100
  c.eval_every = 2000
  c.checkpoint_every = 1000
  c.eval_batch_size = 128
  c.beta.gamma = 0.005
  c.split.query_per_class = 100
  c.split.train_per_class = 500
  return c
