"""HashNet on MS-COCO (80 categories, multi-label), AlexNet at 224 px, 48 bits, mAP@5000.

  python train.py --config=configs/hashnet_coco.py \
      --config.dataset=list:PATH/coco/all.txt --workdir=runs/hashnet_coco

Data: a `list:` file with one `relative/image.jpg 0 1 ... 0` line per image (80 multi-hot
labels; images without any category removed, as in the HashNet release), images resolved
relative to the list file's folder and resized to 224 px. Protocol (paper): 5,000 queries,
the rest is the database (~117,000 images), 10,000 training images drawn from it; mAP@5000.
Training as in configs/hashnet_nuswide.py.
"""

from configs import hashnet_nuswide


def get_config():
  c = hashnet_nuswide.get_config()
  c.dataset = 'list:data/coco/all.txt'
  return c
