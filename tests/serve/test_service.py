import os
import shutil
import threading

import numpy as np
import pytest

from hashjax.retrieval import codes as codes_lib
from hashjax.retrieval import metrics
from hashjax.retrieval.search import HammingIndex, hamming_topk
from hashjax.serve import service as service_lib
from hashjax.serve.service import SearchService, ServeError


@pytest.mark.parametrize('multi_hot', [False, True])
@pytest.mark.parametrize('topk', [None, 1, 7, 40])
def test_average_precision_equals_the_metrics_module(multi_hot, topk):
  rng = np.random.default_rng(topk or 0)
  db = rng.integers(0, 256, (300, 1), dtype=np.uint8)  # 8 bits: many ties
  queries = rng.integers(0, 256, (12, 1), dtype=np.uint8)
  shape = (300, 4) if multi_hot else (300,)
  db_labels = rng.integers(0, 2 if multi_hot else 4, shape)
  query_labels = rng.integers(0, 2 if multi_hot else 4, (12,) + shape[1:])
  want = metrics.average_precision(queries, db, query_labels, db_labels, topk=topk)
  got = [service_lib.average_precision(codes_lib.host_distances(q, db),
                                       service_lib.relevance(y, db_labels), topk)
         for q, y in zip(queries, query_labels)]
  # metrics accumulates in float32 on the device; this is float64 on the host
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.fixture
def run(served_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(served_run, workdir)
  return workdir


@pytest.fixture
def service(run):
  service = SearchService(run)
  yield service
  service.close()


def test_a_gallery_search_is_the_indexs_search_with_the_runs_ap(service, run):
  index = HammingIndex.load(os.path.join(run, 'codes.npz'))
  answer = service.search_query(3, topk=12)
  dist, ids = hamming_topk(index.extras['query_codes'][[3]], index.db_codes, 12)
  assert [r['item'] for r in answer['results']] == ids[0].tolist()
  assert [r['distance'] for r in answer['results']] == dist[0].tolist()
  label = index.extras['query_labels'][3]
  assert [r['relevant'] for r in answer['results']] == (index.db_labels[ids[0]] == label).tolist()
  want = metrics.average_precision(index.extras['query_codes'][[3]], index.db_codes,
                                   index.extras['query_labels'][[3]], index.db_labels)
  assert answer['ap'] == pytest.approx(want[0], abs=1e-6) and answer['label'] == int(label)


def test_an_uploaded_database_image_gets_the_code_the_run_indexed(service, run):
  index = HammingIndex.load(os.path.join(run, 'codes.npz'))
  for item in (0, 17, 400):
    code = service.encoder.encode(service.item_image(item)[None])
    np.testing.assert_array_equal(code[0], index.db_codes[item])
    hits = service.search_image(service.item_image(item), topk=50)['results']
    assert {'item': item, 'distance': 0} in [{k: h[k] for k in ('item', 'distance')}
                                             for h in hits]


def test_radius_keeps_only_the_results_within_it(service):
  answer = service.search_query(0, topk=50, radius=1)
  assert answer['results'] and all(r['distance'] <= 1 for r in answer['results'])
  full = service.search_query(0, topk=50)['results']
  assert answer['results'] == [r for r in full if r['distance'] <= 1]


def test_added_images_are_searchable_and_survive_a_restart_without_re_encoding(service, run):
  images = np.stack([service.item_image(i) for i in (5, 6, 7)])
  codes = service.encoder.encode(images)
  num = len(service.index)
  ids = service.add(images, np.array([service.parse_label('2'), -1, 4]))
  assert ids == [num, num + 1, num + 2] and service.stats()['added'] == 3
  service.max_topk = num + 3
  hit = service.search_item(ids[0], topk=num + 3)['results']
  assert {'item': ids[0], 'distance': 0, 'label': 2, 'relevant': True, 'added': True} in hit
  unlabelled = service.search_item(ids[1], topk=5)  # added without a label: no AP, no relevance
  assert unlabelled['ap'] is None and unlabelled['label'] is None
  assert all(r['relevant'] is None for r in unlabelled['results'])
  service.close()
  again = SearchService(run)
  try:
    again.encoder.encode = None  # a restart must not encode the added images again
    assert len(again.index) == num + 3
    np.testing.assert_array_equal(again.index.db_codes[num:], codes)
    np.testing.assert_array_equal(again.item_image(num + 2), images[2])
    assert again.index.db_labels[num:].tolist() == [2, -1, 4]
  finally:
    again.encoder = service.encoder
    again.store.close()


def test_concurrent_searches_and_adds_are_consistent(service):
  num, errors = len(service.index), []
  image = service.item_image(9)

  def add():
    for _ in range(5):
      service.add(np.stack([image, image]), np.array([1, 1]))

  def search():
    for i in range(10):
      answer = service.search_query(i % service.num_query, topk=20)
      ids = [r['item'] for r in answer['results']]
      labels = service.index.db_labels
      if any(i >= answer['database'] for i in ids) or any(
          r['label'] != labels[r['item']] for r in answer['results']):
        errors.append(answer)

  threads = [threading.Thread(target=f) for f in (add, add, search, search, search)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and len(service.index) == num + 20 == len(service.store) + num
  np.testing.assert_array_equal(service.index.db_codes[num:],
                                np.repeat(service.encoder.encode(image[None]), 20, axis=0))


@pytest.mark.parametrize('call, message', [
    (lambda s: s.search_query(10**6, 5), r'query 1000000 does not exist; accepted: 0\.\.49'),
    (lambda s: s.search_item(-1, 5), r'database item -1 does not exist; accepted: 0\.\.'),
    (lambda s: s.search_query(0, 0), r'topk=0 is out of range; accepted: 1\.\.1000'),
    (lambda s: s.search_query(0, 5, radius=17), r'radius=17 is out of range; accepted: 0\.\.16'),
    (lambda s: s.parse_label('11'), r"label='11' is not one class id in 0\.\.9"),
    (lambda s: s.parse_label('1,2'), r"label='1,2' is not one class id"),
    (lambda s: s.add(np.zeros((1, 9, 9, 1), np.uint8)), r'images must be uint8 \[M, 8, 8, 1\]'),
    (lambda s: s.add(np.zeros((2, 8, 8, 1), np.uint8), np.zeros(1)), 'labels must be given for'),
    (lambda s: s.add(np.zeros((1, 8, 8, 1), np.uint8)), 'labels must be given for every'),
    (lambda s: s.search_query('9' * 500, 5), r"query '99999.*… does not exist"),
])
def test_bad_requests_are_one_line_errors_with_a_status(service, call, message):
  with pytest.raises(ServeError, match=message) as e:
    call(service)
  assert '\n' not in str(e.value) and len(str(e.value)) < 200 and 400 <= e.value.status < 500
  assert len(service.store) == 0 and len(service.index) == service.num_original  # none stored


def test_a_run_that_is_not_finished_is_refused(tmp_path):
  with pytest.raises(ValueError, match='must be a finished train.py run'):
    SearchService(str(tmp_path))


def test_codes_of_another_width_are_refused_at_start(run):
  index = HammingIndex.load(os.path.join(run, 'codes.npz'))  # 16 bits
  wider = HammingIndex(np.concatenate([index.db_codes] * 2, axis=1), 32, index.db_labels,
                       extras=index.extras)
  wider.save(os.path.join(run, 'codes.npz'))  # as if copied from a 32-bit run
  with pytest.raises(ServeError, match=r"codes.npz holds 32-bit codes; the run's model gives "
                                       r"16: it is not this run's codes.npz"):
    SearchService(run)


def test_a_run_on_images_of_5_channels_is_refused_at_start(run, monkeypatch):
  load_data = service_lib.job.load_data

  class FiveChannels:
    def __init__(self, source):
      self.source = source

    def images(self, indices):
      return np.repeat(self.source.images(indices)[..., :1], 5, axis=-1)

  monkeypatch.setattr(service_lib.job, 'load_data',
                      lambda cfg: (FiveChannels(load_data(cfg)[0]), load_data(cfg)[1]))
  with pytest.raises(ServeError, match=r'trained on images of 5 channels; the service takes '
                                       r'uploads and shows pictures of 1 \(grey\) or 3 \(RGB\)$'):
    SearchService(run)
