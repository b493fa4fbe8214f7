"""Tests for hashjax/hashing/baselines.py: LSH and ITQ."""

import numpy as np
import pytest

from hashjax.data import base as data_base
from hashjax.data import sources as data
from hashjax.data.split import protocol_split
from hashjax.hashing import baselines
from hashjax.retrieval import metrics
from hashjax.runtime.errors import BaselineError


def _digits_split():
  source = data.load_source('digits')
  split = protocol_split(source.labels, seed=0, query_per_class=20, train_per_class=50)
  flat = lambda idx: data_base.to_float(source.images(idx)).reshape(len(idx), -1)
  return (flat(split.train), flat(split.query), flat(split.database),
          source.labels[split.query], source.labels[split.database])


def test_lsh_shapes_and_determinism():
  x = np.random.default_rng(0).standard_normal((50, 20))
  model = baselines.lsh_fit(20, 16, seed=3, mean_D=x.mean(0))
  codes = baselines.lsh_encode(model, x)
  assert codes.shape == (50, 16) and codes.dtype == np.int8
  assert set(np.unique(codes)) <= {-1, 1}
  np.testing.assert_array_equal(codes, baselines.lsh_encode(
      baselines.lsh_fit(20, 16, seed=3, mean_D=x.mean(0)), x))
  assert not np.array_equal(codes, baselines.lsh_encode(
      baselines.lsh_fit(20, 16, seed=4, mean_D=x.mean(0)), x))


def test_itq_error_decreases_and_rotation_is_orthogonal():
  x = np.random.default_rng(0).standard_normal((300, 40)) @ np.diag(np.linspace(3, 0.1, 40))
  model = baselines.itq_fit(x, 16, iterations=50, seed=0)
  errors = model.quantization_errors
  assert len(errors) == 51
  # Each alternation minimises over B then over R, so the objective never rises.
  assert np.all(np.diff(errors) <= 1e-9 * errors[0])
  assert errors[-1] < 0.97 * errors[0]  # 50.9 → 47.8 here
  np.testing.assert_allclose(model.rotation_KxK @ model.rotation_KxK.T, np.eye(16), atol=1e-10)
  codes = baselines.itq_encode(model, x)
  assert codes.shape == (300, 16) and set(np.unique(codes)) <= {-1, 1}
  np.testing.assert_array_equal(codes, baselines.itq_encode(
      baselines.itq_fit(x, 16, iterations=50, seed=0), x))


@pytest.mark.parametrize('method', ['lsh', 'itq'])
def test_map_well_above_chance_on_digits(method):
  x_train, x_q, x_db, q_labels, db_labels = _digits_split()
  if method == 'lsh':
    model = baselines.lsh_fit(x_train.shape[1], 32, seed=0, mean_D=x_train.mean(0))
    encode = lambda x: baselines.lsh_encode(model, x)
  else:
    model = baselines.itq_fit(x_train, 32, seed=0)
    encode = lambda x: baselines.itq_encode(model, x)
  map_all = metrics.mean_average_precision(encode(x_q), encode(x_db), q_labels, db_labels)
  chance = np.mean([np.mean(db_labels == c) for c in q_labels])  # ≈ 0.1
  assert map_all > chance + 0.2


def test_bad_inputs():
  with pytest.raises(BaselineError, match='bits'):
    baselines.itq_fit(np.zeros((10, 4)), 8)
  with pytest.raises(BaselineError, match='dimensions'):
    baselines.lsh_encode(baselines.lsh_fit(4, 8), np.zeros((3, 5)))
  with pytest.raises(BaselineError, match='2-D'):
    baselines.itq_encode(baselines.itq_fit(np.random.default_rng(0).random((10, 4)), 2),
                         np.zeros(4))
