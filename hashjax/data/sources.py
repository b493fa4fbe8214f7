"""The source dispatcher: a data set named by a string (`digits`, `npz:PATH`,
`tfds:NAME[:SPLIT]`, `folder:PATH`, `list:PATH`, `pairs:SPEC`, `mosaic:SPEC`) opened as a
`data.base.Source` of uint8 images [N, H, W, C] and labels (class ids [N] or multi-hot [N, L]).
"""

from __future__ import annotations

from hashjax.data import arrays, files, tfds_source
from hashjax.data.base import Source
from hashjax.runtime.errors import DataError

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
    return arrays.load_digits(image_size)
  kind, _, rest = spec.partition(':') if isinstance(spec, str) else ('', '', '')
  if kind not in ('npz', 'tfds', 'folder', 'list', 'pairs', 'mosaic'):
    raise DataError(f'unknown dataset {spec!r}; accepted: {SOURCES}')
  if not rest:
    raise DataError(f'dataset {spec!r} names no {kind} source; accepted: {SOURCES}')
  if kind == 'npz':
    return arrays.load_npz(rest, image_size)
  if kind == 'tfds':
    return tfds_source.load_tfds(rest, image_size)
  if kind == 'pairs':
    return arrays.pair_source(load_source(rest, image_size=image_size, cache_dir=cache_dir))
  if kind == 'mosaic':
    return arrays.mosaic_source(load_source(rest, image_size=image_size, cache_dir=cache_dir))
  if kind == 'folder':
    return files.load_folder(rest, image_size, cache_dir)
  return files.load_list(rest, image_size)
