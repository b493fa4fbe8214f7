import numpy as np
import pytest

from hashjax.hashing import increments
from hashjax.hashing.config import SplitConfig
from hashjax.runtime.errors import DataError

LABELS = np.repeat(np.arange(10), 60)  # 600 items, 60 per class


def _split(**kw):
  s = SplitConfig(query_per_class=5, train_per_class=20, **kw)
  return increments.incremental_split(LABELS, s, seed=3)


def test_class_incremental_stages():
  full, old, later = _split(new_classes='7,8,9', stage='old')
  assert set(LABELS[old.train]) == set(range(7)) and set(LABELS[old.database]) == set(range(7))
  assert set(LABELS[old.query]) == set(range(7))  # queries of classes not yet known are out
  np.testing.assert_array_equal(later, np.isin(LABELS, [7, 8, 9]) & ~np.isin(
      np.arange(len(LABELS)), full.query))
  _, new, _ = _split(new_classes='7,8,9', stage='new')
  assert set(LABELS[new.train]) == {7, 8, 9} and len(new.train) == 60
  np.testing.assert_array_equal(new.database, full.database)
  np.testing.assert_array_equal(new.query, full.query)
  s = SplitConfig(query_per_class=5, train_per_class=20, new_classes='7,8,9', stage='new')
  _, replay, _ = increments.incremental_split(LABELS, s, seed=3, replay_per_class=2)
  assert len(replay.train) == 60 + 7 * 2
  assert set(replay.train) >= set(new.train) and set(replay.train) <= set(full.train)


def test_sample_incremental_half_of_each_class_arrives_later():
  full, old, later = _split(later_fraction=0.5, stage='old')
  _, new, _ = _split(later_fraction=0.5, stage='new')
  for c in range(10):
    assert np.sum(LABELS[old.train] == c) == 10 and np.sum(LABELS[new.train] == c) == 10
  assert not set(old.train) & set(new.train)
  assert set(old.train) | set(new.train) == set(full.train)
  assert not later[full.query].any()
  np.testing.assert_array_equal(old.query, full.query)  # every class is old
  np.testing.assert_array_equal(old.database, full.database[~later[full.database]])


def test_validation_split_never_touches_the_test_queries():
  full, _, _ = _split()
  val, _, _ = _split(validation=True)
  assert not set(val.query) & set(full.query)
  assert not set(val.database) & set(full.query) and not set(val.train) & set(full.query)
  assert len(val.query) == len(full.query)


@pytest.mark.parametrize('kw, match', [
    ({'new_classes': '7,x'}, "split.new_classes='7,x' must be comma-separated class ids"),
    ({'new_classes': '12'}, 'split.new_classes has class 12, which the data lacks'),
    ({'new_classes': ','.join(map(str, range(10)))}, 'names every class'),
])
def test_bad_increments_are_one_line_errors(kw, match):
  with pytest.raises(DataError, match=match):
    _split(**kw)
