"""Image sources, the retrieval protocol split, and deterministic batches.

Data flows one way: a *source* (`digits`, `npz:PATH`, `tfds:NAME[:SPLIT]`, `pairs:SPEC`,
`mosaic:SPEC`, and the image files `folder:PATH` and `list:PATH` of `hashjax.image_files`)
gives uint8 images [N, H, W, C] and labels (class ids [N] or multi-hot [N, L]);
`protocol_split` divides its indices into query / database / training sets; `batch_indices`
picks the training examples of a step from (seed, step) alone, so a resumed run sees exactly
the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
import zlib
from typing import Protocol

import numpy as np


log = logging.getLogger(__name__)


class DataError(ValueError):
  """A data source or split that cannot be used; the message says what is accepted."""


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


class TfdsSource:
  """A `tfds.data_source` (random access, no TensorFlow), images resized to `image_size`."""

  def __init__(self, records, labels: np.ndarray, image_size: int | None):
    self._records = records
    self.labels = labels
    self._image_size = image_size

  def __len__(self) -> int:
    return len(self.labels)

  def images(self, indices: np.ndarray) -> np.ndarray:
    return np.stack([_resize(np.asarray(self._records[int(i)]['image']), self._image_size)
                     for i in indices])


def _resize(image_HxWxC: np.ndarray, size: int | None) -> np.ndarray:
  if size is None or image_HxWxC.shape[:2] == (size, size):
    return image_HxWxC
  from PIL import Image  # pylint: disable=g-import-not-at-top
  channels = image_HxWxC.shape[-1]
  pil = Image.fromarray(image_HxWxC[..., 0] if channels == 1 else image_HxWxC)
  out = np.asarray(pil.resize((size, size), Image.BILINEAR))
  return out[..., None] if out.ndim == 2 else out


SOURCES = ('digits, npz:PATH, tfds:NAME[:SPLIT], folder:PATH, list:PATH, pairs:SPEC, '
           'mosaic:SPEC')


def load_source(spec: str, *, image_size: int | None = None,
                cache_dir: str | None = None) -> Source:
  """Opens the data source named by `spec`.

  Args:
    spec: 'digits' (scikit-learn's bundled 1,797 8×8 digits, 10 classes, no network),
      'npz:PATH' (keys `image` uint8 [N,H,W] or [N,H,W,C] and `label` int [N] or multi-hot
      [N,L]), or 'tfds:NAME[:SPLIT]' (a dataset already prepared in array_record format;
      SPLIT defaults to 'train'), or 'folder:PATH' (every jpg/png/webp under PATH, center
      cropped and resized to image_size, RGB; subfolder names become class labels), or
      'list:PATH' (a text file of `relative/image.jpg 0 1 0 ...` lines: multi-hot labels,
      images relative to the list file's folder, resized to image_size; NUS-WIDE, MS-COCO),
      or 'pairs:SPEC' (two items of the single-label source SPEC side by side, L² classes
      with ~1/L² of pairs similar: `pair_source`; e.g. 'pairs:npz:mnist_t10k.npz' is a
      100-class set of 56×28 images), or 'mosaic:SPEC' (2×2 mosaics of four items of SPEC,
      multi-hot labels over its classes: `mosaic_source`; 'mosaic:npz:mnist_t10k.npz' gives
      56×56 images sharing 0–4 digits).
    image_size: resize images to image_size × image_size pixels (None: keep their size;
      required for folders and lists; for pairs it applies to each half).
    cache_dir: where a folder's decoded images are cached as one uint8 array file (None: no
      cache).

  Returns:
    A `Source`. Raises `DataError` with a one-line message for anything unusable.
  """
  if spec == 'digits':
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    # Pixel values are 0..16; spread them over 0..255 like any other uint8 image.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return _array_source(images, digits.target.astype(np.int64), image_size)
  kind, _, rest = spec.partition(':') if isinstance(spec, str) else ('', '', '')
  if kind not in ('npz', 'tfds', 'folder', 'list', 'pairs', 'mosaic'):
    raise DataError(f'unknown dataset {spec!r}; accepted: {SOURCES}')
  if not rest:
    raise DataError(f'dataset {spec!r} names no {kind} source; accepted: {SOURCES}')
  if kind == 'npz':
    return _load_npz(rest, image_size)
  if kind == 'tfds':
    return _load_tfds(rest, image_size)
  if kind == 'pairs':
    return pair_source(load_source(rest, image_size=image_size, cache_dir=cache_dir))
  if kind == 'mosaic':
    return mosaic_source(load_source(rest, image_size=image_size, cache_dir=cache_dir))
  from hashjax import image_files  # pylint: disable=g-import-not-at-top  # imports this module
  if kind == 'folder':
    return image_files.load_folder(rest, image_size, cache_dir)
  return image_files.load_list(rest, image_size)


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
    images = np.stack([_resize(im, image_size) for im in images])
  return ArraySource(images, labels)


NPZ_CONTENT = ('image uint8 [N,H,W(,C)] and label int [N] or multi-hot [N,L] '
               '(np.savez(path, image=..., label=...))')
# What np.load raises for a file that is cut short or is no archive.
UNREADABLE_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


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


def _load_npz(path: str, image_size: int | None) -> ArraySource:
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


def _load_tfds(name_split: str, image_size: int | None) -> TfdsSource:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, _, split = name_split.partition(':')
  split = split or 'train'
  try:
    records = tfds.data_source(name, split=split, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'unknown tfds dataset {name!r}; see `tfds.list_builders()`') from None
  except (NotImplementedError, AssertionError, FileNotFoundError, KeyError, ValueError) as e:
    raise DataError(
        f'tfds dataset {name!r} (split {split!r}) is not prepared for random access: run '
        f'`tfds build {name} --file_format=array_record` once on a machine with network '
        f'(set TFDS_DATA_DIR to where it went); tfds said: '
        f'{str(e.args[0] if e.args else e).splitlines()[0]}') from None
  if len(records) == 0:
    raise DataError(f'tfds dataset {name!r} split {split!r} is empty')
  first = records[0]
  if 'image' not in first or 'label' not in first:
    raise DataError(f'tfds dataset {name!r} has features {sorted(first)}; hashjax needs '
                    "'image' and 'label'")
  labels = np.stack([np.asarray(records[i]['label']) for i in range(len(records))])
  warn_unlabelled(labels, f'tfds:{name}:{split}')
  if image_size is None and len({tuple(np.asarray(records[i]['image']).shape[:2])
                                  for i in range(min(len(records), 64))}) > 1:
    raise DataError(f'tfds dataset {name!r} has images of different sizes; set image_size')
  return TfdsSource(records, labels.astype(np.int64), image_size)


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
  return np.stack([_resize(im, size) for im in images_NxHxWxC])


@dataclasses.dataclass(frozen=True)
class Split:
  """Indices into a source: query and database are disjoint; train ⊆ database by default."""
  query: np.ndarray
  database: np.ndarray
  train: np.ndarray


def _pick(rng, pool: np.ndarray, labels: np.ndarray, per_class: int | None,
          total: int | None, what: str) -> np.ndarray:
  if (per_class is None) == (total is None):
    raise DataError(f'set exactly one of {what}_per_class and num_{what} '
                    f'(got {per_class!r} and {total!r})')
  if total is not None:
    if not 0 < total <= len(pool):
      raise DataError(f'num_{what}={total} is impossible with {len(pool)} items available; '
                      f'accepted: 1..{len(pool)}')
    return np.sort(rng.choice(pool, size=total, replace=False))
  if labels.ndim != 1:
    raise DataError(f'{what}_per_class needs single-label data; multi-hot labels need num_{what}')
  if per_class < 1:
    raise DataError(f'{what}_per_class={per_class} must be ≥ 1')
  chosen = []
  for c in np.unique(labels[pool]):
    members = pool[labels[pool] == c]
    if len(members) < per_class:
      raise DataError(f'{what}_per_class={per_class} is impossible: class {c} has only '
                      f'{len(members)} items available; accepted: 1..{len(members)}')
    chosen.append(rng.choice(members, size=per_class, replace=False))
  return np.sort(np.concatenate(chosen))


def protocol_split(labels: np.ndarray, *, seed: int, query_per_class: int | None = None,
                   num_query: int | None = None, train_per_class: int | None = None,
                   num_train: int | None = None, train_in_database: bool = True) -> Split:
  """The retrieval protocol: queries drawn first, the rest is the database, and the training
  set drawn from the database (the usual CIFAR-10 / ImageNet-100 / MNIST protocols).

  Set one of query_per_class / num_query and one of train_per_class / num_train.
  With train_in_database=False the training images leave the database.

  Returns:
    `Split` of sorted int64 index arrays. Deterministic in `seed`.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng([seed, 0x5117])
  everything = np.arange(len(labels))
  query = _pick(rng, everything, labels, query_per_class, num_query, 'query')
  database = np.setdiff1d(everything, query)
  if len(database) < 2:
    raise DataError(f'the query set leaves {len(database)} database items; need at least 2')
  train = _pick(rng, database, labels, train_per_class, num_train, 'train')
  if not train_in_database:
    database = np.setdiff1d(database, train)
    if len(database) == 0:
      raise DataError('train_in_database=False leaves an empty database')
  return Split(query=query, database=database, train=train)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Positions (into the training set) of the examples of global batch `step`.

  The training set is visited epoch by epoch, each epoch a permutation drawn from
  (seed, epoch); batches run across epoch boundaries. A function of its arguments only,
  so resuming at step t reproduces the batches of an uninterrupted run.

  Returns:
    int64 [batch_size].
  """
  positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = positions // num_examples, positions % num_examples
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch), 0xBA7C]).permutation(num_examples)
    sel = epochs == epoch
    out[sel] = perm[offsets[sel]]
  return out


def to_float(images_uint8) -> np.ndarray:
  """uint8 images → float32 in [−1, 1] (the network's input scale)."""
  return np.asarray(images_uint8, np.float32) * (2.0 / 255.0) - 1.0


def flat_pixels(source: Source, indices: np.ndarray) -> np.ndarray:
  """Items of `source` as float32 pixel vectors [len(indices), H·W·C] in [−1, 1] (the raw
  space of LSH / ITQ and of nearest-neighbour ground truth)."""
  return to_float(source.images(indices)).reshape(len(indices), -1)
