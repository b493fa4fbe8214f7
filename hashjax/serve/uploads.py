"""Uploaded images → the model's input: decoded, checked and fitted to the run's image shape.

Accepted formats: FORMATS (Pillow's other decoders are not offered to uploads: some run
external programs, e.g. Ghostscript for EPS). An upload is refused (a `BadImage` with the HTTP
status and a one-line message) when it is empty, not an image, cut short or undecodable, or has
a side outside MIN_SIDE..MAX_SIDE pixels or more than MAX_PIXELS pixels; the size is checked
from the header, before any pixel is decoded, so a decompression bomb costs nothing. The image
is converted to grey or RGB (the run's channels), centre-cropped to a square and resized to the
run's H × W by `image_files.fit_square`, as the `folder:` data source does.

Memory and CPU under load: decoding reserves an estimate of its memory (pixels × bytes per
pixel of the decoded image, its conversion and its square crop, as Pillow stores them: RGB in
4 bytes a pixel) from one process-wide budget,
MAX_DECODING_BYTES, and waits while other decodes hold it, so concurrent uploads cannot add up
past it; a request's images together have at most MAX_REQUEST_PIXELS pixels (`count_pixels`,
from their headers, before any is decoded).
"""

from __future__ import annotations

import contextlib
import io
import threading

import numpy as np

from hashjax.data import files as image_files

FORMATS = ('PNG', 'JPEG', 'GIF', 'BMP', 'WEBP', 'TIFF')
MIN_SIDE, MAX_SIDE = 4, 8192
MAX_PIXELS = 40_000_000
MAX_REQUEST_PIXELS = 120_000_000  # all images of one request together
MAX_DECODING_BYTES = 1 << 30  # decoded pixels in flight, all requests together


class _Budget:
  """Bytes that decodes in flight may hold together; `reserve` waits for room."""

  def __init__(self, limit: int):
    self.limit, self.used, self._room = limit, 0, threading.Condition()

  @contextlib.contextmanager
  def reserve(self, nbytes: int):
    with self._room:
      self._room.wait_for(lambda: self.used + nbytes <= self.limit)
      self.used += nbytes
    try:
      yield
    finally:
      with self._room:
        self.used -= nbytes
        self._room.notify_all()


DECODING = _Budget(MAX_DECODING_BYTES)


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
    need = width * height * decoding_bytes_per_pixel(im.mode, image_shape[-1])
    if need > DECODING.limit:
      raise BadImage(f'{name} is {width}×{height} pixels of mode {im.mode}: too large to '
                     'decode here', 413)
    try:
      with DECODING.reserve(need):
        im.load()
        return image_files.fit_square(im, image_shape)
    except MemoryError:
      raise BadImage(f'{name} is too large to decode', 413) from None
    except Exception as e:  # pylint: disable=broad-except  # any decoder failure is the upload's
      raise BadImage(f'{name} cannot be decoded ({type(e).__name__}: '
                     f'{" ".join(str(e).split())[:80]})') from None


def _stored_bytes(mode: str) -> int:
  """Bytes per pixel Pillow holds an image of `mode` in (RGB too takes 4)."""
  return 1 if mode in ('1', 'L', 'P') else 2 if mode.startswith('I;16') else 4


def decoding_bytes_per_pixel(mode: str, channels: int) -> int:
  """Bytes per pixel of the images alive at once while an upload of `mode` is fitted to
  `channels`: the decoded image, its conversion and the square crop of that (`fit_square`)."""
  return _stored_bytes(mode) + 2 * _stored_bytes('L' if channels == 1 else 'RGB')


def count_pixels(bodies: list[bytes]) -> int:
  """Width × height summed over the images in `bodies`, read from their headers (an
  unreadable one counts 0: decoding it gives its error); BadImage 413 above
  MAX_REQUEST_PIXELS."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  total = 0
  for data in bodies:
    try:
      with Image.open(io.BytesIO(data), formats=FORMATS) as im:
        total += im.size[0] * im.size[1]
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
      continue  # not an image, cut short, or a bomb: decode_image refuses it with its status
  if total > MAX_REQUEST_PIXELS:
    raise BadImage(f'the images of this request have {total:,} pixels in all; at most '
                   f'{MAX_REQUEST_PIXELS:,} are accepted per request', 413)
  return total


def encode_png(image_HxWxC: np.ndarray, scale: int = 1) -> bytes:
  """uint8 [H, W, C] → PNG bytes, each pixel repeated `scale` times on both axes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image_HxWxC).repeat(scale, axis=0).repeat(scale, axis=1)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format='PNG')
  return buffer.getvalue()
