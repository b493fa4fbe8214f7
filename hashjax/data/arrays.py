"""Sources held in memory: scikit-learn's digits, npz archives, and the sets built from a
single-label source (`pairs:` side by side, `mosaic:` 2×2 mosaics)."""

from __future__ import annotations

import os

import numpy as np

from hashjax.data.base import ArraySource, Source, resize, warn_unlabelled
from hashjax.runtime.errors import UNREADABLE_NPZ_ERRORS, DataError


def load_digits(image_size: int | None) -> ArraySource:
  """scikit-learn's bundled 1,797 8×8 digits (10 classes, no network), pixel values 0..16
  spread over 0..255, uint8 [N, 8, 8, 1] (resized to `image_size` when set)."""
  from sklearn.datasets import load_digits as sklearn_digits  # pylint: disable=g-import-not-at-top
  digits = sklearn_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return _array_source(images, digits.target.astype(np.int64), image_size)


def pair_source(base: Source, num_items: int | None = None, seed: int = 0) -> ArraySource:
  """A set with rare similar pairs: two items of `base` side by side.

  Item n is base image a_n on the left and b_n on the right (two independent permutations of
  the base, cycled), label L·y(a_n) + y(b_n) with L = max class id + 1. With L balanced
  classes the L² pair classes hold ~1/L² of the items each, so ~1/L² of pairs are similar
  (~1% for digits, against ~10% for the digits alone).

  Args:
    base: single-label source of equal-size images [N, H, W, C] (class ids 0..L−1).
    num_items: items to build (None: N). seed: the pairing (deterministic; fixed at 0 by
      the `pairs:` spec).

  Returns:
    ArraySource with uint8 images [num_items, H, 2W, C] and int64 labels [num_items].
  """
  if base.labels.ndim != 1:
    raise DataError('a pairs: source needs single-label data (class ids), not multi-hot labels')
  n = len(base)
  num_items = n if num_items is None else num_items
  rng = np.random.default_rng([seed, 0x9A1E])
  draw = lambda: np.concatenate([rng.permutation(n) for _ in range(-(-num_items // n))])
  left, right = draw()[:num_items], draw()[:num_items]
  images = np.concatenate([base.images(left), base.images(right)], axis=2)
  labels = (int(base.labels.max()) + 1) * base.labels[left] + base.labels[right]
  return ArraySource(images, labels.astype(np.int64))


def mosaic_source(base: Source, num_items: int | None = None, seed: int = 0) -> ArraySource:
  """A multi-label set: 2×2 mosaics of four items of `base`, for graded relevance.

  Item n places base images a, b, c, d (four independent permutations of the base, cycled)
  top-left, top-right, bottom-left, bottom-right; its label is multi-hot over the base's L
  classes (the classes of the four, each once). Two mosaics share 0 to 4 classes.

  Args:
    base: single-label source of equal-size images [N, H, W, C] (class ids 0..L−1).
    num_items: items to build (None: N). seed: the placement (deterministic; fixed at 0 by
      the `mosaic:` spec).

  Returns:
    ArraySource with uint8 images [num_items, 2H, 2W, C] and int64 multi-hot labels
    [num_items, L].
  """
  if base.labels.ndim != 1:
    raise DataError('a mosaic: source needs single-label data (class ids), not multi-hot '
                    'labels')
  n = len(base)
  num_items = n if num_items is None else num_items
  rng = np.random.default_rng([seed, 0x3051])
  draw = lambda: np.concatenate([rng.permutation(n) for _ in range(-(-num_items // n))])
  quarters = [draw()[:num_items] for _ in range(4)]
  top = np.concatenate([base.images(quarters[0]), base.images(quarters[1])], axis=2)
  bottom = np.concatenate([base.images(quarters[2]), base.images(quarters[3])], axis=2)
  labels = np.zeros((num_items, int(base.labels.max()) + 1), np.int64)
  for quarter in quarters:
    labels[np.arange(num_items), base.labels[quarter]] = 1
  return ArraySource(np.concatenate([top, bottom], axis=1), labels)


def _array_source(images, labels, image_size):
  if image_size is not None and images.shape[1:3] != (image_size, image_size):
    images = np.stack([resize(im, image_size) for im in images])
  return ArraySource(images, labels)


NPZ_CONTENT = ('image uint8 [N,H,W(,C)] and label int [N] or multi-hot [N,L] '
               '(np.savez(path, image=..., label=...))')


def _read_npz(path: str) -> dict[str, np.ndarray]:
  """The arrays of an npz archive; a `DataError` for a .npy array or an unreadable file."""
  try:
    with open(path, 'rb') as f:
      is_npy = f.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX
    if not is_npy:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
  except UNREADABLE_NPZ_ERRORS as e:
    raise DataError(f'{path!r} is not a readable .npz file ({e}); an npz must hold '
                    f'{NPZ_CONTENT}') from None
  raise DataError(f'{path!r} is a .npy array, not an .npz archive; an npz must hold '
                  f'{NPZ_CONTENT}')


def load_npz(path: str, image_size: int | None) -> ArraySource:
  if os.path.isdir(path):
    raise DataError(f'npz file {path!r} is a directory, not an .npz file; give the path of an '
                    f'npz holding {NPZ_CONTENT}')
  if not os.path.isfile(path):
    raise DataError(f'npz file {path!r} does not exist')
  arrays = _read_npz(path)
  missing = {'image', 'label'} - set(arrays)
  if missing:
    raise DataError(f'{path!r} lacks key(s) {sorted(missing)}; found {sorted(arrays)}; '
                    f'expected {NPZ_CONTENT}')
  images, labels = arrays['image'], arrays['label']
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise DataError(f'{path!r}: image must be uint8 [N,H,W] or [N,H,W,C], got '
                    f'{images.dtype} {images.shape}')
  if images.ndim == 3:
    images = images[..., None]
  if labels.ndim not in (1, 2) or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'{path!r}: label must be int [N] or multi-hot [N,L], got '
                    f'{labels.dtype} {labels.shape}')
  if len(labels) != len(images):
    raise DataError(f'{path!r}: {len(images)} images but {len(labels)} labels')
  if labels.ndim == 1 and labels.min() < 0:
    raise DataError(f'{path!r}: class ids must be ≥ 0, found {labels.min()}')
  warn_unlabelled(labels, path)
  return _array_source(images, labels.astype(np.int64), image_size)
