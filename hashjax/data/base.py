"""What every data source is: random-access uint8 images [N, H, W, C] and labels (class ids
[N] or multi-hot [N, L]); sources held in memory or restricted to some classes; the pixel
conversions every job uses."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Protocol

import numpy as np

from hashjax.runtime.errors import DataError

log = logging.getLogger(__name__)


class Source(Protocol):
  """Random-access images and labels."""
  labels: np.ndarray  # int [N] or multi-hot {0,1} [N, L]

  def __len__(self) -> int: ...

  def images(self, indices: np.ndarray) -> np.ndarray:
    """uint8 [len(indices), H, W, C]."""


@dataclasses.dataclass
class ArraySource:
  """A source held in memory: uint8 images [N, H, W, C] and labels."""
  images_NxHxWxC: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def images(self, indices: np.ndarray) -> np.ndarray:
    return self.images_NxHxWxC[indices]


@dataclasses.dataclass
class SubsetSource:
  """The items `keep` of another source (e.g. the 100 classes of ImageNet-100)."""
  base: Source
  keep: np.ndarray

  def __post_init__(self):
    self.labels = self.base.labels[self.keep]

  def __len__(self) -> int:
    return len(self.keep)

  def images(self, indices: np.ndarray) -> np.ndarray:
    return self.base.images(self.keep[indices])


def warn_unlabelled(labels: np.ndarray, where: str) -> None:
  """One warning with the count of multi-hot rows [N, L] that are all zero: such an item is
  similar to nothing, so as a query it scores AP 0 and in training it only adds dissimilar
  pairs (all of them: mAP 0). Class ids [N] always label their item."""
  if labels.ndim != 2:
    return
  unlabelled = int(np.count_nonzero(~labels.any(axis=1)))
  if unlabelled:
    log.warning('%d of %d items of %s have no label (all-zero multi-hot rows): they are '
                'similar to no item, score AP 0 as queries and add only dissimilar pairs in '
                'training; give them a label or leave them out', unlabelled, len(labels), where)


def read_class_list(path: str) -> np.ndarray:
  """Class ids, one integer per line ('#' starts a comment), as a 1-D int64 array."""
  if not os.path.isfile(path):
    raise DataError(f'class list {path!r} does not exist')
  ids = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      text = line.split('#')[0].strip()
      if not text:
        continue
      try:
        ids.append(int(text))
      except ValueError:
        raise DataError(f'{path}:{n}: {text!r} is not an integer class id') from None
  if not ids:
    raise DataError(f'class list {path!r} names no class')
  return np.asarray(ids, np.int64)


def restrict_classes(source: Source, class_ids: np.ndarray) -> SubsetSource:
  """Keeps the single-label items whose class is in `class_ids`."""
  if source.labels.ndim != 1:
    raise DataError('a class list needs single-label data (class ids), not multi-hot labels')
  keep = np.flatnonzero(np.isin(source.labels, class_ids))
  missing = np.setdiff1d(class_ids, source.labels[keep])
  if len(missing):
    raise DataError(f'class list names class {missing[0]}, which has no item in the data')
  return SubsetSource(source, keep)


def resize(image_HxWxC: np.ndarray, size: int | None) -> np.ndarray:
  """One uint8 image [H, W, C] resized (bilinear) to size × size; None or its size: as it is."""
  if size is None or image_HxWxC.shape[:2] == (size, size):
    return image_HxWxC
  from PIL import Image  # pylint: disable=g-import-not-at-top
  channels = image_HxWxC.shape[-1]
  pil = Image.fromarray(image_HxWxC[..., 0] if channels == 1 else image_HxWxC)
  out = np.asarray(pil.resize((size, size), Image.BILINEAR))
  return out[..., None] if out.ndim == 2 else out


def fit_to_size(images_NxHxWxC: np.ndarray, size: int) -> np.ndarray:
  """Makes images size × size: smaller ones are padded with black around (28 → 32 keeps
  MNIST digits pixel-exact), others resized."""
  h, w = images_NxHxWxC.shape[1:3]
  if (h, w) == (size, size):
    return images_NxHxWxC
  if h <= size and w <= size and size - h <= 8 and size - w <= 8:
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images_NxHxWxC, ((0, 0), (top, size - h - top), (left, size - w - left),
                                   (0, 0)))
  return np.stack([resize(im, size) for im in images_NxHxWxC])


def to_float(images_uint8) -> np.ndarray:
  """uint8 images → float32 in [−1, 1] (the network's input scale)."""
  return np.asarray(images_uint8, np.float32) * (2.0 / 255.0) - 1.0


def flat_pixels(source: Source, indices: np.ndarray) -> np.ndarray:
  """Items of `source` as float32 pixel vectors [len(indices), H·W·C] in [−1, 1] (the raw
  space of LSH / ITQ and of nearest-neighbour ground truth)."""
  return to_float(source.images(indices)).reshape(len(indices), -1)
