"""Datasets of tensorflow-datasets, read with random access through `tfds.data_source` (no
TensorFlow needed): prepared once with `tfds build NAME --file_format=array_record`."""

from __future__ import annotations

import numpy as np

from hashjax.data.base import resize, warn_unlabelled
from hashjax.runtime.errors import DataError


class TfdsSource:
  """A `tfds.data_source` (random access, no TensorFlow), images resized to `image_size`."""

  def __init__(self, records, labels: np.ndarray, image_size: int | None):
    self._records = records
    self.labels = labels
    self._image_size = image_size

  def __len__(self) -> int:
    return len(self.labels)

  def images(self, indices: np.ndarray) -> np.ndarray:
    return np.stack([resize(np.asarray(self._records[int(i)]['image']), self._image_size)
                     for i in indices])


def load_tfds(name_split: str, image_size: int | None) -> TfdsSource:
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
