"""eval_extra (hashjax/hashing/evaluation.py): the names, and each metric wired to its protocol."""

import numpy as np
import pytest

from hashjax.data.base import ArraySource
from hashjax.data.split import Split
from hashjax.hashing import config, evaluation
from hashjax.retrieval import graded, metrics


def _source(n=60, multi=True, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
  labels = (rng.random((n, 4)) > 0.5).astype(np.int64) if multi else rng.integers(0, 4, n)
  split = Split(query=np.arange(10), database=np.arange(10, n), train=np.arange(10, n))
  return ArraySource(images, labels), split


def test_names_parse_and_unknown_ones_are_one_line_errors():
  assert config.parse_eval_extra('') == ()
  assert config.parse_eval_extra(' ndcg, copies ') == ('ndcg', 'copies')
  with pytest.raises(ValueError, match="unknown eval_extra metric 'bleu'; accepted: ndcg"):
    config.parse_eval_extra('ndcg,bleu')


def test_each_metric_follows_its_protocol():
  source, split = _source()
  rng = np.random.default_rng(1)
  query_codes = np.where(rng.random((10, 16)) > 0.5, 1, -1)
  db_codes = np.where(rng.random((50, 16)) > 0.5, 1, -1)
  constant = lambda src, indices: np.ones((len(indices), 16), np.float32)  # every copy ties
  out = evaluation.score(query_codes, db_codes, source, split, topk=None, bits=16,
                         extra=('ndcg', 'neighbours', 'copies'), encode=constant, seed=0)
  assert out['map@all'] == pytest.approx(metrics.mean_average_precision(
      query_codes, db_codes, source.labels[:10], source.labels[10:]))
  assert out['ndcg@all'] == pytest.approx(graded.mean_ndcg(
      query_codes, db_codes, source.labels[:10], source.labels[10:]))
  assert out['ndcg@all_interval'][0] <= out['ndcg@all_expected'] <= out['ndcg@all_interval'][1]
  assert out['neighbour_topk'] == 1 and 0 <= out['neighbour_map@all'] <= 1  # 1 % of 50, ≥ 1
  # Constant codes tie every one of the 60 items (database + originals) with each copy.
  ones = lambda m: np.ones((m, 16), np.int64)
  out = evaluation.evaluate_copies(constant, source, split, ones(10), ones(50), seed=0)
  n = 60
  assert out['copy_map@all_expected'] == pytest.approx(np.sum(1 / np.arange(1, n + 1)) / n)
  assert out['copy_recall@10_expected'] == pytest.approx(10 / n)


def test_rows_of_earlier_versions_are_read_in_todays_keys():
  # eval.json of `python train.py` before the metric keys took the map@100 form.
  old = {'bits': 32, 'map': 0.9926635166765951, 'map_expected': 0.9927804278211234,
         'map_interval': [0.9917184254583717, 0.9952119995222991], 'map_topk': None,
         'num_database': 1497, 'num_query': 300, 'precision_at_radius_2': 0.9859770114942528,
         'recall_at_radius_2': 0.9785455652208683, 'step': 2000}
  assert evaluation.upgrade_row(old) == {
      'bits': 32, 'map@all': 0.9926635166765951, 'map@all_expected': 0.9927804278211234,
      'map@all_interval': [0.9917184254583717, 0.9952119995222991], 'map_topk': None,
      'num_database': 1497, 'num_query': 300, 'precision@radius2': 0.9859770114942528,
      'recall@radius2': 0.9785455652208683, 'step': 2000}
  update = {'map': 0.5, 'map_kept_all': 0.5, 'map_kept_new_interval': [0.1, 0.2],
            'map_topk': 1000, 'copy_recall_at_10_expected': 0.3, 'neighbour_k': 9, 'ndcg': 0.7}
  assert evaluation.upgrade_row(update) == {
      'map@1000': 0.5, 'map@1000_kept_all': 0.5, 'map@1000_kept_new_interval': [0.1, 0.2],
      'map_topk': 1000, 'copy_recall@10_expected': 0.3, 'neighbour_topk': 9, 'ndcg@1000': 0.7}
  new = {'map@all': 0.9, 'map_topk': None, 'step': 3}
  assert evaluation.upgrade_row(new) is new
