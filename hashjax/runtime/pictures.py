"""Image grids and PNG files (sample grids of the GAN, search results)."""

from __future__ import annotations

import numpy as np

from hashjax.runtime.disk import write_or_warn


def to_uint8(images) -> np.ndarray:
  """Images in [−1, 1] (float) → uint8 in [0, 255]."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images_NxHxWxC: np.ndarray, ncol: int, *, gap: int = 2, scale: int = 1
              ) -> np.ndarray:
  """Tiles uint8 images row by row, `ncol` per row, on a white background.

  Returns:
    uint8 [rows·(H·scale + gap) + gap, ncol·(W·scale + gap) + gap, 3] (grayscale → RGB).
  """
  images = np.asarray(images_NxHxWxC)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, _ = images.shape
  rows = -(-n // ncol)
  grid = np.full((rows * (h + gap) + gap, ncol * (w + gap) + gap, 3), 255, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, ncol)
    top, left = gap + r * (h + gap), gap + c * (w + gap)
    grid[top:top + h, left:left + w] = image
  return grid


def save_png(path: str, image_HxWx3: np.ndarray) -> bool:
  """Writes a PNG; a full disk gives a warning and False, never a half-written file."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def write(tmp):
    with open(tmp, 'wb') as f:
      Image.fromarray(image_HxWx3).save(f, format='PNG')
  return write_or_warn(path, write)
