"""Uploaded images → the model's input: decoded, checked and fitted to the run's image shape.

Accepted formats: FORMATS (Pillow's other decoders are not offered to uploads: some run
external programs, e.g. Ghostscript for EPS). An upload is refused (a `BadImage` with the HTTP
status and a one-line message) when it is empty, not an image, cut short or undecodable, or has
a side outside MIN_SIDE..MAX_SIDE pixels or more than MAX_PIXELS pixels; the size is checked
from the header, before any pixel is decoded, so a decompression bomb costs nothing. The image
is converted to grey or RGB (the run's channels), centre-cropped to a square and resized to the
run's H × W by `image_files.fit_square`, as the `folder:` data source does.
"""

from __future__ import annotations

import io

import numpy as np

from hashjax.data import files as image_files

FORMATS = ('PNG', 'JPEG', 'GIF', 'BMP', 'WEBP', 'TIFF')
MIN_SIDE, MAX_SIDE = 4, 8192
MAX_PIXELS = 40_000_000


class BadImage(ValueError):
  """An upload that is not a usable image; `status` is the HTTP status to answer with."""

  def __init__(self, message: str, status: int = 415):
    super().__init__(message)
    self.status = status


def decode_image(data: bytes, image_shape, name: str = 'upload') -> np.ndarray:
  """The image in `data` as uint8 [H, W, C] with (H, W, C) = image_shape.

  Raises:
    BadImage: 400 empty, 415 not an image or undecodable, 413 too many pixels, 422 a side
      outside MIN_SIDE..MAX_SIDE.
  """
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  if not data:
    raise BadImage(f'{name} is empty; send the bytes of an image (PNG, JPEG, ...)', 400)
  try:
    im = Image.open(io.BytesIO(data), formats=FORMATS)
  except UnidentifiedImageError:
    raise BadImage(f'{name} is not an image of an accepted format ({", ".join(FORMATS)})'
                   ) from None
  except Image.DecompressionBombError:
    raise BadImage(f'{name} has more than {MAX_PIXELS:,} pixels', 413) from None
  except Exception as e:  # pylint: disable=broad-except  # a decoder failing on bad bytes
    raise BadImage(f'{name} cannot be read as an image ({type(e).__name__})') from None
  with im:
    width, height = im.size
    if width * height > MAX_PIXELS:
      raise BadImage(f'{name} is {width}×{height} pixels; at most {MAX_PIXELS:,} are accepted',
                     413)
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
      raise BadImage(f'{name} is {width}×{height} pixels; each side must be '
                     f'{MIN_SIDE}..{MAX_SIDE}', 422)
    try:
      im.load()
      return image_files.fit_square(im, image_shape)
    except MemoryError:
      raise BadImage(f'{name} is too large to decode', 413) from None
    except Exception as e:  # pylint: disable=broad-except  # any decoder failure is the upload's
      raise BadImage(f'{name} cannot be decoded ({type(e).__name__}: '
                     f'{" ".join(str(e).split())[:80]})') from None


def encode_png(image_HxWxC: np.ndarray, scale: int = 1) -> bytes:
  """uint8 [H, W, C] → PNG bytes, each pixel repeated `scale` times on both axes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image_HxWxC).repeat(scale, axis=0).repeat(scale, axis=1)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format='PNG')
  return buffer.getvalue()
