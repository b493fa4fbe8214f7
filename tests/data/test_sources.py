import numpy as np
import pytest
import tensorflow_datasets as tfds

from hashjax.data import arrays
from hashjax.data import base as data_base
from hashjax.data import sources as data
from hashjax.data.split import protocol_split
from hashjax.runtime import errors, plumbing


def test_digits_source():
  src = data.load_source('digits')
  assert len(src) == 1797
  images = src.images(np.arange(5))
  assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8 and images.max() <= 255
  assert set(np.unique(src.labels)) == set(range(10))
  assert data.load_source('digits', image_size=16).images(np.arange(2)).shape == (2, 16, 16, 1)


def test_npz_source_single_and_multi_label(tmp_path):
  path = tmp_path / 'd.npz'
  np.savez(path, image=np.zeros((6, 5, 5), np.uint8), label=np.eye(6, 3, dtype=np.int64))
  src = data.load_source(f'npz:{path}')
  assert src.images(np.array([0, 1])).shape == (2, 5, 5, 1) and src.labels.shape == (6, 3)


@pytest.mark.parametrize('arrays,match', [
    ({'image': np.zeros((3, 4, 4), np.uint8)}, r"lacks key\(s\) \['label'\]"),
    ({'image': np.zeros((3, 4, 4), np.float32), 'label': np.zeros(3, int)}, 'must be uint8'),
    ({'image': np.zeros((3, 4, 4), np.uint8), 'label': np.zeros(2, int)}, '3 images but 2 labels'),
    ({'image': np.zeros((3, 4, 4), np.uint8), 'label': np.zeros(3, float)}, 'label must be int'),
])
def test_malformed_npz_is_a_clear_error(tmp_path, arrays, match):
  path = tmp_path / 'bad.npz'
  np.savez(path, **arrays)
  with pytest.raises(errors.DataError, match=match):
    data.load_source(f'npz:{path}')


def test_not_an_npz_file(tmp_path):
  path = tmp_path / 'x.npz'
  path.write_text('hello')
  with pytest.raises(errors.DataError, match='not a readable .npz'):
    data.load_source(f'npz:{path}')
  with pytest.raises(errors.DataError, match='unknown dataset'):
    data.load_source('imagenet')


def test_multi_hot_items_without_label_warn_once_with_their_count(tmp_path, caplog):
  path = tmp_path / 'd.npz'
  labels = np.eye(6, 3, dtype=np.int64)  # rows 3..5 are all zero
  np.savez(path, image=np.zeros((6, 5, 5), np.uint8), label=labels)
  with caplog.at_level('WARNING', logger='hashjax'):
    data.load_source(f'npz:{path}')
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 1 and warnings[0].startswith('3 of 6 items of ') and 'd.npz' in warnings[0]
  assert 'have no label' in warnings[0]
  caplog.clear()
  np.savez(path, image=np.zeros((6, 5, 5), np.uint8), label=np.eye(6, 6, dtype=np.int64))
  with caplog.at_level('WARNING', logger='hashjax'):
    data.load_source(f'npz:{path}')  # every item labelled; class ids are never multi-hot
    data.load_source('digits')
  assert not caplog.records


def test_npy_file_as_npz_says_what_an_npz_holds(tmp_path):
  path = tmp_path / 'images.npy'
  np.save(path, np.zeros((3, 4, 4), np.uint8))
  with pytest.raises(errors.DataError, match=r"'.*images.npy' is a .npy array, not an .npz "
                                           r'archive; an npz must hold image uint8 \[N,H,W'):
    data.load_source(f'npz:{path}')


def test_directory_as_npz_is_named_a_directory(tmp_path):
  with pytest.raises(errors.DataError, match=r"npz file '.*' is a directory, not an .npz file; "
                                           'give the path of an npz holding image'):
    data.load_source(f'npz:{tmp_path}')
  with pytest.raises(errors.DataError, match=r"npz file '.*nope.npz' does not exist"):
    data.load_source(f'npz:{tmp_path / "nope.npz"}')


def test_truncated_npz_is_a_clear_error(tmp_path):
  path = tmp_path / 'cut.npz'
  np.savez(path, image=np.zeros((20, 8, 8), np.uint8), label=np.arange(20) % 4)
  path.write_bytes(path.read_bytes()[:300])
  with pytest.raises(errors.DataError, match=r"'.*cut.npz' is not a readable .npz file"):
    data.load_source(f'npz:{path}')


@pytest.mark.parametrize('spec', ['npz:', 'list:', 'folder:', 'tfds:', 'pairs:', 'npz'])
def test_a_spec_without_its_path_is_a_clear_error(spec):
  kind = spec.rstrip(':')
  with pytest.raises(errors.DataError, match=f"dataset '{spec}' names no {kind} source; accepted: "
                                           'digits, npz:PATH, .*pairs:SPEC'):
    data.load_source(spec)


def test_pair_source_labels_and_imbalance():
  base = data.load_source('digits')
  pairs = arrays.pair_source(base, num_items=3000, seed=0)
  assert pairs.images(np.arange(2)).shape == (2, 8, 16, 1)
  assert len(pairs) == 3000 and pairs.labels.min() >= 0 and pairs.labels.max() <= 99
  # Label 10·a + b: the left half is a base image of class a, the right one of class b.
  all_images = base.images(np.arange(len(base)))
  for n in range(5):
    image = pairs.images(np.array([n]))[0]
    left, right = image[:, :8], image[:, 8:]
    lefts = np.flatnonzero((all_images == left).all(axis=(1, 2, 3)))
    rights = np.flatnonzero((all_images == right).all(axis=(1, 2, 3)))
    assert pairs.labels[n] // 10 in base.labels[lefts]
    assert pairs.labels[n] % 10 in base.labels[rights]
  np.testing.assert_array_equal(pairs.labels, arrays.pair_source(base, 3000, 0).labels)
  assert not np.array_equal(pairs.labels, arrays.pair_source(base, 3000, 1).labels)
  counts = np.bincount(pairs.labels, minlength=100)
  similar = (counts * (counts - 1)).sum() / (3000 * 2999)
  assert 0.008 < similar < 0.013  # ~1% of pairs, vs ~10% for the digits alone


def test_pairs_spec_pairs_any_single_label_source(tmp_path):
  spec = data.load_source('pairs:digits')
  np.testing.assert_array_equal(spec.labels, arrays.pair_source(data.load_source('digits')).labels)
  assert len(spec) == 1797 and spec.images(np.arange(1)).shape == (1, 8, 16, 1)
  assert data.load_source('pairs:digits', image_size=12).images(np.arange(1)).shape == (
      1, 12, 24, 1)  # image_size applies to each half
  # Three classes: label 3·a + b (C = max class id + 1).
  path = tmp_path / 'three.npz'
  np.savez(path, image=np.arange(6, dtype=np.uint8).reshape(6, 1, 1), label=np.arange(6) % 3)
  three = data.load_source(f'pairs:npz:{path}')
  left, right = three.images(np.arange(6))[:, 0, :, 0].T
  np.testing.assert_array_equal(three.labels, 3 * (left % 3) + right % 3)
  np.savez(path, image=np.zeros((4, 2, 2), np.uint8), label=np.eye(4, 2, dtype=np.int64))
  with pytest.raises(errors.DataError, match='a pairs: source needs single-label data'):
    data.load_source(f'pairs:npz:{path}')


def test_mosaic_source_places_four_items_and_labels_their_classes(tmp_path):
  # Item i of the base is a 1×1 image of value i, class i % 4: every pixel names its item.
  path = tmp_path / 'base.npz'
  np.savez(path, image=np.arange(12, dtype=np.uint8).reshape(12, 1, 1), label=np.arange(12) % 4)
  mosaics = data.load_source(f'mosaic:npz:{path}')
  images = mosaics.images(np.arange(len(mosaics)))
  assert images.shape == (12, 2, 2, 1) and mosaics.labels.shape == (12, 4)
  for image, label in zip(images, mosaics.labels):
    classes = set(int(v) % 4 for v in image.reshape(-1))
    assert set(np.flatnonzero(label)) == classes
  # Deterministic, seeded, and every base item appears once in each quarter.
  np.testing.assert_array_equal(mosaics.labels, data.load_source(f'mosaic:npz:{path}').labels)
  assert not np.array_equal(images, arrays.mosaic_source(data.load_source(f'npz:{path}'),
                                                       seed=1).images(np.arange(12)))
  assert sorted(images[:, 0, 0, 0]) == list(range(12))
  shared = mosaics.labels @ mosaics.labels.T
  assert shared.min() >= 0 and shared.max() <= 4  # graded relevance: 0–4 shared classes
  with pytest.raises(errors.DataError, match='a mosaic: source needs single-label data'):
    arrays.mosaic_source(mosaics)
  with pytest.raises(errors.DataError, match='missing.npz'):
    data.load_source(f'mosaic:npz:{tmp_path}/missing.npz')


def test_tfds_source_through_data_source_mock():
  with tfds.testing.mock_data(num_examples=12):
    src = data.load_source('tfds:mnist:train', image_size=16)
    images = src.images(np.array([0, 3]))
  assert images.shape == (2, 16, 16, 1) and images.dtype == np.uint8
  assert src.labels.shape == (12,)


def test_unprepared_tfds_dataset_says_how_to_prepare():
  with pytest.raises(errors.DataError, match='tfds build smallnorb --file_format=array_record'):
    data.load_source('tfds:smallnorb')


def test_protocol_split_counts_disjointness_and_determinism():
  labels = np.repeat(np.arange(4), 25)
  split = protocol_split(labels, seed=3, query_per_class=5, train_per_class=10)
  assert len(split.query) == 20 and len(split.database) == 80 and len(split.train) == 40
  assert not set(split.query) & set(split.database)
  assert set(split.train) <= set(split.database)
  assert all((labels[split.query] == c).sum() == 5 for c in range(4))
  again = protocol_split(labels, seed=3, query_per_class=5, train_per_class=10)
  np.testing.assert_array_equal(split.query, again.query)
  other = protocol_split(labels, seed=4, query_per_class=5, train_per_class=10)
  assert not np.array_equal(split.query, other.query)
  outside = protocol_split(labels, seed=3, num_query=10, num_train=30, train_in_database=False)
  assert len(outside.database) == 60 and not set(outside.train) & set(outside.database)


@pytest.mark.parametrize('kwargs,match', [
    (dict(query_per_class=30, train_per_class=1), 'query_per_class=30 is impossible'),
    (dict(num_query=101, train_per_class=1), 'num_query=101 is impossible'),
    (dict(num_query=99, num_train=1), 'leaves 1 database items'),
    (dict(query_per_class=5, train_per_class=21), 'train_per_class=21 is impossible'),
    (dict(query_per_class=5, num_query=3, train_per_class=1), 'exactly one of'),
])
def test_impossible_splits(kwargs, match):
  with pytest.raises(errors.DataError, match=match):
    protocol_split(np.repeat(np.arange(4), 25), seed=0, **kwargs)


def test_batches_are_a_function_of_seed_and_step():
  first_epoch = np.concatenate([plumbing.batch_indices(10, 5, s, seed=1) for s in (0, 1)])
  assert sorted(first_epoch) == list(range(10))  # one epoch visits every example once
  np.testing.assert_array_equal(plumbing.batch_indices(10, 4, 7, seed=1),
                                plumbing.batch_indices(10, 4, 7, seed=1))
  # A batch straddling an epoch boundary takes the tail of one permutation, head of the next.
  straddle = plumbing.batch_indices(10, 4, 2, seed=1)
  assert len(straddle) == 4
  assert not np.array_equal(plumbing.batch_indices(10, 5, 2, seed=1), plumbing.batch_indices(10, 5, 0, seed=1))


def test_class_list_restricts_items(tmp_path):
  path = tmp_path / 'classes.txt'
  path.write_text('# two digits\n3\n7\n')
  src = data_base.restrict_classes(data.load_source('digits'), data_base.read_class_list(str(path)))
  assert set(np.unique(src.labels)) == {3, 7}
  assert src.images(np.arange(3)).shape == (3, 8, 8, 1)
  path.write_text('3\nseven\n')
  with pytest.raises(errors.DataError, match="'seven' is not an integer"):
    data_base.read_class_list(str(path))
  path.write_text('3\n42\n')
  with pytest.raises(errors.DataError, match='class 42'):
    data_base.restrict_classes(data.load_source('digits'), data_base.read_class_list(str(path)))


def test_fit_to_size_pads_28_to_32_and_resizes_8():
  images = np.full((2, 28, 28, 1), 200, np.uint8)
  padded = data_base.fit_to_size(images, 32)
  assert padded.shape == (2, 32, 32, 1) and padded[0, 0, 0, 0] == 0 and padded[0, 2, 2, 0] == 200
  assert data_base.fit_to_size(np.zeros((1, 8, 8, 1), np.uint8), 32).shape == (1, 32, 32, 1)
