"""HashNet on ImageNet-100 (ResNet-50, 224 px, 64 bits, mAP@1000): the paper's protocol.

  tfds build imagenet2012 --file_format=array_record  # once; needs the ILSVRC2012 archives
  python train.py --config=configs/hashnet_imagenet100.py \
      --config.class_list=PATH/imagenet100_classes.txt --workdir=runs/hashnet_imagenet100

`class_list` is a text file of the 100 class ids (0..999, one per line) of the HashNet
ImageNet-100 subset. Protocol: 5,000 queries (50 per class), the rest of the 100 classes is
the database (~128,500 images), 13,000 training images (130 per class) drawn from it,
mAP@1000. The paper takes its queries from the validation images; here both come from the
tfds split named in `dataset` (train+validation by default).
"""

from configs import hashnet_cifar10


def get_config():
  c = hashnet_cifar10.get_config()
  c.dataset = 'tfds:imagenet2012:train+validation'
  c.backbone = 'resnet50'
  c.bits = 64
  c.map_topk = 1000
  c.split.query_per_class = 50
  c.split.train_per_class = 130
  return c
