"""Shared by the experiments' tests: a tiny MNIST-like npz."""

import numpy as np
import pytest
from sklearn.datasets import load_digits


@pytest.fixture(scope='session')
def tiny_npz(tmp_path_factory):
  """300 of scikit-learn's digits at 28×28 (8×8 scaled ×3, padded by 2), 30 per class."""
  digits = load_digits()
  keep = np.concatenate([np.flatnonzero(digits.target == c)[:30] for c in range(10)])
  images = np.kron(digits.images[keep], np.ones((3, 3))) * (255 / 16)
  images = np.pad(images, ((0, 0), (2, 2), (2, 2))).round().astype(np.uint8)
  path = tmp_path_factory.mktemp('tiny') / 'mnist_like.npz'
  np.savez(path, image=images, label=digits.target[keep])
  return str(path)
