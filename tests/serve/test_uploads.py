import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from hashjax.data import files as image_files
from hashjax.serve import uploads


def _png(size, mode='RGB'):
  buffer = io.BytesIO()
  Image.new(mode, size, 0).save(buffer, format='PNG')
  return buffer.getvalue()


def test_a_request_over_its_pixel_budget_is_refused_from_the_headers(monkeypatch):
  monkeypatch.setattr(uploads, 'MAX_REQUEST_PIXELS', 1000)
  assert uploads.count_pixels([_png((20, 20)), _png((20, 20)), b'not an image']) == 800
  with pytest.raises(uploads.BadImage, match=r'^the images of this request have 1,200 pixels '
                                             r'in all; at most 1,000 are accepted') as e:
    uploads.count_pixels([_png((20, 20))] * 3)
  assert e.value.status == 413


def test_concurrent_decodes_hold_at_most_the_budget(monkeypatch):
  need = 64 * 64 * uploads.decoding_bytes_per_pixel('RGB', 3)  # one 64×64 RGB image
  monkeypatch.setattr(uploads, 'DECODING', uploads._Budget(need * 2))  # two at a time
  inside, most, lock = [0], [0], threading.Lock()
  fit = image_files.fit_square

  def slow_fit(im, shape):
    with lock:
      inside[0] += 1
      most[0] = max(most[0], inside[0])
    time.sleep(0.05)
    with lock:
      inside[0] -= 1
    return fit(im, shape)

  monkeypatch.setattr(image_files, 'fit_square', slow_fit)
  body, out = _png((64, 64)), []
  threads = [threading.Thread(target=lambda: out.append(
      uploads.decode_image(body, (8, 8, 3)).shape)) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert out == [(8, 8, 3)] * 8 and most[0] == 2 and uploads.DECODING.used == 0


def test_the_estimate_counts_pillows_storage_of_each_image_alive():
  # Pillow holds RGB in 4 bytes a pixel; the decoded image, its conversion and its crop.
  assert uploads.decoding_bytes_per_pixel('RGB', 3) == 4 + 4 + 4
  assert uploads.decoding_bytes_per_pixel('L', 1) == 1 + 1 + 1
  assert uploads.decoding_bytes_per_pixel('I;16', 1) == 2 + 1 + 1
  assert uploads.decoding_bytes_per_pixel('RGBA', 1) == 4 + 1 + 1


def test_an_image_larger_than_the_whole_budget_is_413(monkeypatch):
  monkeypatch.setattr(uploads, 'DECODING', uploads._Budget(1000))
  with pytest.raises(uploads.BadImage, match=r'^upload is 64×64 pixels of mode I;16: too '
                                             r'large to decode here$') as e:
    uploads.decode_image(_png((64, 64), 'I;16'), (8, 8, 1))
  assert e.value.status == 413
  np.testing.assert_array_equal(uploads.DECODING.used, 0)
