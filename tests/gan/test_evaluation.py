import numpy as np

from hashjax.data import base as data_lib
from hashjax.gan.evaluation import quantize_to_uint8_grid


def test_quantize_to_uint8_grid():
  real = data_lib.to_float(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1))
  np.testing.assert_array_equal(quantize_to_uint8_grid(real), real)  # the grid is kept
  q = quantize_to_uint8_grid(np.array([-1.2, -0.9999, 0.0, 0.9999, 1.5], np.float32))
  np.testing.assert_allclose(q, data_lib.to_float(np.array([0, 0, 128, 255, 255], np.uint8)))
