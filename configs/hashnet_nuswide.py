"""HashNet on NUS-WIDE (81 concepts, multi-label), AlexNet at 224 px, 48 bits, mAP@5000.

  python train.py --config=configs/hashnet_nuswide.py \
      --config.dataset=list:PATH/nus_wide/all.txt --workdir=runs/hashnet_nuswide

Data: a `list:` file with one `relative/image.jpg 0 1 0 ... 0` line per image (81 multi-hot
labels; the HashNet release's `train.txt`/`test.txt`/`database.txt` concatenated, or any list
of that form), images resolved relative to the list file's folder and resized to 224 px.
Pairs are similar when they share at least one concept. Protocol (paper): 5,000 queries,
the rest is the database, 10,000 training images drawn from it; mAP@5000. Training: the
paper's SGD settings (see configs/hashnet_cifar10.py). Meant for a GPU; load ImageNet
weights with `hashjax.hashing.pretrained.load_pretrained` (see its module docstring).
"""

from configs import hashnet_cifar10


def get_config():
  c = hashnet_cifar10.get_config()
  c.dataset = 'list:data/nus_wide/all.txt'
  c.map_topk = 5000
  c.split.query_per_class = None
  c.split.num_query = 5000
  c.split.train_per_class = None
  c.split.num_train = 10_000
  return c
