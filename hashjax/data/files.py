"""Image files as data sources: a folder of images (`folder:PATH`) and an image list with
multi-hot labels (`list:PATH`, NUS-WIDE and MS-COCO in the HashNet release).

Opened through `hashjax.data.sources.load_source`; both decode with PIL to RGB uint8 at the model
resolution `image_size`.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from hashjax.data import label_table
from hashjax.data.base import ArraySource, warn_unlabelled
from hashjax.runtime.disk import write_or_warn
from hashjax.runtime.errors import UNREADABLE_NPZ_ERRORS, DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp')


def list_images(root: str) -> tuple[list[str], np.ndarray, list[str]]:
  """Image files under root (sorted) and class ids from their top-level subfolder."""
  paths = []
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    paths += [os.path.relpath(os.path.join(folder, f), root) for f in sorted(files)
              if f.lower().endswith(IMAGE_EXTENSIONS)]
  groups = [p.split(os.sep)[0] if os.sep in p else '' for p in paths]
  class_names = sorted(set(groups))
  index = {name: i for i, name in enumerate(class_names)}
  return paths, np.array([index[g] for g in groups], np.int64), class_names


def fit_square(im, image_shape) -> np.ndarray:
  """A Pillow image → uint8 [H, W, C]: grey (C = 1) or RGB (C = 3), its central square crop
  resized bicubic to H × W (the folder source's images and the search service's uploads)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width, channels = image_shape
  im = im.convert('L' if channels == 1 else 'RGB')
  side = min(im.size)
  left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
  im = im.crop((left, top, left + side, top + side))
  if im.size != (width, height):
    im = im.resize((width, height), Image.BICUBIC)
  out = np.asarray(im, np.uint8)
  return out[..., None] if out.ndim == 2 else out


def _decode_square(path: str, size: int) -> np.ndarray | None:
  """RGB uint8 [size, size, 3]: the central square crop, resized; None if undecodable."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return fit_square(im, (size, size, 3))
  except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
    return None


def _read_cache(path: str) -> tuple[np.ndarray, np.ndarray] | None:
  """The cached (images, positions of the decoded files); None, with one warning, when the
  file is damaged (cut short by a copy or a full disk), so the caller decodes the images
  again and rewrites it."""
  try:
    with np.load(path, allow_pickle=False) as f:
      return f['image'], f['position']
  except UNREADABLE_NPZ_ERRORS + (KeyError,) as e:
    logging.getLogger(__name__).warning(
        'the image cache %s cannot be read (%s); decoding the images again and rewriting it',
        path, ' '.join(str(e).split())[:200] or type(e).__name__)
    return None


@dataclasses.dataclass
class LabelledFolder(ArraySource):
  """A folder's images with the attributes of a label table (`hashjax.data.label_table`).

  labels: multi-hot int64 [N, ΣV] (each known attribute's one-hot, side by side);
  attribute_ids: int32 [N, A] value ids, −1 where unknown; names, values: the table's."""
  attribute_ids: np.ndarray = None
  names: tuple[str, ...] = ()
  values: tuple[tuple[str, ...], ...] = ()


UNLABELLED = ('drop', 'keep')


def _decode_all(root: str, paths: list[str], image_size: int, cache: str | None):
  """(uint8 images [M, S, S, 3], int64 positions [M] in `paths` of the decoded files)."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  cached = _read_cache(cache) if cache and os.path.exists(cache) else None
  if cached is not None:
    return cached
  with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    decoded = list(pool.map(lambda p: _decode_square(os.path.join(root, p), image_size), paths))
  good = np.array([i for i, im in enumerate(decoded) if im is not None], np.int64)
  if len(good) < len(paths):
    bad = [paths[i] for i, im in enumerate(decoded) if im is None]
    logging.getLogger(__name__).warning(
        'skipped %d of %d files in %s that could not be decoded (e.g. %s)', len(bad),
        len(paths), root, bad[0])
  if not len(good):
    raise DataError(f'no image in {root!r} could be decoded ({len(paths)} tried)')
  images = np.stack([decoded[i] for i in good])
  if cache:
    os.makedirs(os.path.dirname(cache), exist_ok=True)

    def write(tmp):
      with open(tmp, 'wb') as f:
        np.savez(f, image=images, position=good)
    write_or_warn(cache, write)
  return images, good


def _apply_table(table, paths: list[str], unlabelled: str, root: str) -> list[str]:
  """The paths to load: all, or those with a row ('drop'); warns once about the rows that
  name no image of the folder."""
  keys = {table.image_key(p) for p in paths}
  unknown = [k for k in table.rows if k not in keys]
  if unknown:
    logging.getLogger(__name__).warning(
        'label table %s: %d of its %d rows name no image in %s (e.g. %r); they are ignored',
        table.path, len(unknown), len(table.rows), root, unknown[0])
  kept = paths if unlabelled == 'keep' else [p for p in paths if table.image_key(p) in
                                             table.rows]
  if not kept:
    raise DataError(f'label table {table.path} names none of the {len(paths)} images in '
                    f'{root!r} (rows are keyed by {table.key})')
  return kept


def load_folder(root: str, image_size: int | None, cache_dir: str | None,
                labels: str | None = None, unlabelled: str = 'drop') -> ArraySource:
  """Every image under `root`, its central square resized to image_size (RGB uint8).

  Without `labels`, the top-level subfolders are the classes (int64 [N]; one class if none).
  With `labels` (a label table, `hashjax.data.label_table`), a `LabelledFolder`: images without a
  row are left out (unlabelled='drop') or kept with unknown attributes ('keep').
  Decoded images are cached in `cache_dir` (None: no cache), keyed by the files' names,
  sizes and times.
  """
  import hashlib  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(root):
    raise DataError(f'image folder {root!r} does not exist')
  if image_size is None:
    raise DataError('a folder: source needs image_size (the model resolution)')
  if unlabelled not in UNLABELLED:
    raise DataError(f'unlabelled={unlabelled!r}; accepted: {", ".join(UNLABELLED)}')
  paths, classes, _ = list_images(root)
  if not paths:
    raise DataError(f'image folder {root!r} holds no image file '
                    f'({", ".join(IMAGE_EXTENSIONS)})')
  table = None
  if labels is not None:
    table = label_table.read_label_table(labels)
    paths = _apply_table(table, paths, unlabelled, root)
  stats = [os.stat(os.path.join(root, p)) for p in paths]
  key = hashlib.sha1(repr(('positions', os.path.abspath(root), image_size,  # the format too
                           [(p, st.st_size, st.st_mtime_ns) for p, st in zip(paths, stats)])
                          ).encode()).hexdigest()[:16]
  cache = os.path.join(cache_dir, f'folder_{key}.npz') if cache_dir else None
  images, good = _decode_all(root, paths, image_size, cache)
  if table is None:
    return ArraySource(images, classes[good])
  ids = table.attribute_ids([paths[i] for i in good])
  return LabelledFolder(images, label_table.multi_hot(ids, tuple(map(len, table.values))),
                        ids, table.names, table.values)


# ---------------------------------------------------------------------------------------------
# list:PATH — an image list with multi-hot labels (NUS-WIDE, MS-COCO in the HashNet release)
# ---------------------------------------------------------------------------------------------


class ListSource:
  """Images named by a list file, decoded on access (RGB, resized to image_size × image_size
  with PIL bilinear), with multi-hot labels int64 [N, L]."""

  def __init__(self, paths: list[str], labels: np.ndarray, image_size: int):
    self.paths = paths
    self.labels = labels
    self._image_size = image_size

  def __len__(self) -> int:
    return len(self.labels)

  def images(self, indices: np.ndarray) -> np.ndarray:
    return np.stack([_decode_resized(self.paths[int(i)], self._image_size) for i in indices])


def _decode_resized(path: str, size: int) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert('RGB').resize((size, size), Image.BILINEAR), np.uint8)
  except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
    raise DataError(f'image {path!r} cannot be decoded ({e})') from None


def load_list(path: str, image_size: int | None, root: str | None = None) -> ListSource:
  """Reads a list file: one `relative/image.jpg 0 1 0 ... 1` line per image (multi-hot labels,
  the same number on every line; blank lines and '#' comments skipped). Images are resolved
  relative to `root` (default: the list file's folder) and must all exist."""
  if not os.path.isfile(path):
    raise DataError(f'image list {path!r} does not exist')
  if image_size is None:
    raise DataError('a list: source needs image_size (the model resolution)')
  root = os.path.dirname(os.path.abspath(path)) if root is None else root
  paths, rows = [], []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      parts = line.split('#')[0].split()
      if not parts:
        continue
      if len(parts) < 2 or any(p not in ('0', '1') for p in parts[1:]):
        raise DataError(f'{path}:{n}: expected "relative/path.jpg 0 1 ..." (a path and 0/1 '
                        f'labels), got {line.strip()[:80]!r}')
      if rows and len(parts) - 1 != len(rows[0]):
        raise DataError(f'{path}:{n}: {len(parts) - 1} labels, but line 1 of the list has '
                        f'{len(rows[0])}')
      image = os.path.join(root, parts[0])
      if not os.path.isfile(image):
        raise DataError(f'{path}:{n}: image {image!r} does not exist')
      paths.append(image)
      rows.append([int(p) for p in parts[1:]])
  if not paths:
    raise DataError(f'image list {path!r} names no image')
  labels = np.asarray(rows, np.int64)
  warn_unlabelled(labels, path)
  return ListSource(paths, labels, image_size)
