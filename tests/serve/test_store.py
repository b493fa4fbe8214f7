import errno
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashjax.serve import store as store_lib
from hashjax.serve.store import (
  BATCH,
  AddedStore,
  ItemLayout,
  StoreError,
  StoreFull,
  StoreReadOnly,
)

LAYOUTS = [ItemLayout((4, 4, 1), 2, 'class'), ItemLayout((3, 3, 3), 1, 'multi-hot', 5),
           ItemLayout((2, 2, 1), 3, 'none')]


def _items(layout, count, seed):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (count,) + layout.image_shape, dtype=np.uint8)
  codes = rng.integers(0, 256, (count, layout.code_bytes), dtype=np.uint8)
  labels = {'class': rng.integers(-1, 10, count),
            'multi-hot': rng.integers(0, 2, (count, layout.num_labels), dtype=np.uint8),
            'none': None}[layout.label_kind]
  return images, codes, labels


def _assert_holds(store, batches):
  images = np.concatenate([b[0] for b in batches])
  np.testing.assert_array_equal(store.images, images)
  np.testing.assert_array_equal(store.codes, np.concatenate([b[1] for b in batches]))
  if batches[0][2] is None:
    assert store.labels is None
  else:
    np.testing.assert_array_equal(store.labels, np.concatenate([b[2] for b in batches]))


@pytest.mark.parametrize('layout', LAYOUTS, ids=[l.label_kind for l in LAYOUTS])
def test_adds_are_read_back_in_order_after_reopening(tmp_path, layout):
  path = str(tmp_path / 'added.bin')
  store = AddedStore(path, layout)
  batches = [_items(layout, n, seed) for seed, n in enumerate([1, 5, 70, 2])]
  for batch in batches:
    store.append(*batch)
  _assert_holds(store, batches)
  store.close()
  store = AddedStore(path, layout)
  assert len(store) == 78
  _assert_holds(store, batches)
  store.close()


@pytest.mark.parametrize('cut', [1, 11, 12, 40, -1])
def test_a_torn_last_write_is_cut_off_and_the_acknowledged_adds_stay(tmp_path, cut):
  layout, path = LAYOUTS[0], str(tmp_path / 'added.bin')
  store = AddedStore(path, layout)
  kept = [_items(layout, 3, 0), _items(layout, 2, 1)]
  for batch in kept:
    store.append(*batch)
  size = os.path.getsize(path)
  store.append(*_items(layout, 4, 2))
  store.close()
  with open(path, 'r+b') as f:  # a crash in the middle of the third add's write
    f.truncate(size + cut if cut > 0 else os.path.getsize(path) + cut)
  store = AddedStore(path, layout)
  _assert_holds(store, kept)
  assert os.path.getsize(path) == size
  store.append(*_items(layout, 1, 3))  # and the store goes on from there
  store.close()
  _assert_holds(AddedStore(path, layout), kept + [_items(layout, 1, 3)])


def test_damage_before_acknowledged_adds_is_an_error_and_the_file_is_untouched(tmp_path):
  layout, path = LAYOUTS[0], str(tmp_path / 'added.bin')
  store = AddedStore(path, layout)
  for seed in range(3):
    store.append(*_items(layout, 2, seed))
  store.close()
  header = os.path.getsize(path) - 3 * (12 + 2 * layout.item_bytes)
  with open(path, 'r+b') as f:
    f.seek(header + 20)  # inside the first batch's payload
    f.write(b'\xff\xfe')
  before = open(path, 'rb').read()
  with pytest.raises(StoreError, match=f'damaged at byte {header} .*not a torn last write'):
    AddedStore(path, layout)
  assert open(path, 'rb').read() == before


def test_another_models_store_and_a_second_server_are_refused(tmp_path):
  path = str(tmp_path / 'added.bin')
  store = AddedStore(path, LAYOUTS[0])
  with pytest.raises(StoreError, match='in use by another server'):
    AddedStore(path, LAYOUTS[0])
  store.append(*_items(LAYOUTS[0], 1, 0))
  store.close()
  with pytest.raises(StoreError, match='holds items of another model'):
    AddedStore(path, ItemLayout((4, 4, 1), 4, 'class'))
  (tmp_path / 'junk.bin').write_bytes(b'not a store at all')
  with pytest.raises(StoreError, match='is not an added-items store'):
    AddedStore(str(tmp_path / 'junk.bin'), LAYOUTS[0])


def failing_pwrite(room: int):
  """An os.pwrite that writes `room` bytes in all, then fails with ENOSPC, like a full disk."""
  left = [room]

  def pwrite(fd, data, offset):
    if len(data) > left[0]:
      os.pwrite(fd, bytes(data[:left[0]]), offset)
      left[0] = 0
      raise OSError(errno.ENOSPC, 'No space left on device')
    left[0] -= len(data)
    return os.pwrite(fd, data, offset)
  return pwrite


def test_a_full_disk_refuses_the_add_and_leaves_the_store_as_it_was(tmp_path):
  layout, path = LAYOUTS[0], str(tmp_path / 'added.bin')
  store = AddedStore(path, layout)
  kept = [_items(layout, 3, 0)]
  store.append(*kept[0])
  size = os.path.getsize(path)
  store._pwrite = failing_pwrite(room=30)  # pylint: disable=protected-access
  with pytest.raises(StoreFull, match='the add was not stored .*free space'):
    store.append(*_items(layout, 5, 1))
  assert os.path.getsize(path) == size  # the partial write was cut off again
  _assert_holds(store, kept)
  store._pwrite = os.pwrite  # pylint: disable=protected-access  # space again
  store.append(*_items(layout, 1, 2))
  store.close()
  _assert_holds(AddedStore(path, layout), kept + [_items(layout, 1, 2)])


def test_an_unknown_label_kind_is_one_line():
  with pytest.raises(ValueError, match="label_kind='tags'; accepted: none, class, multi-hot"):
    ItemLayout((2, 2, 1), 1, 'tags')


def test_image_bytes_that_look_like_a_record_do_not_block_recovery(tmp_path):
  layout, path = ItemLayout((4, 4, 1), 2, 'none'), str(tmp_path / 'added.bin')
  store = AddedStore(path, layout)
  forged = np.zeros((3, 4, 4, 1), np.uint8)  # an upload whose pixels spell a record header
  forged[:, 0, :, 0] = np.frombuffer(b'HJB2', np.uint8)
  store.append(forged, np.zeros((3, 2), np.uint8))
  store.append(forged, np.zeros((3, 2), np.uint8))
  store.close()
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 5)  # the second add's write was torn
  store = AddedStore(path, layout)
  assert len(store) == 3
  np.testing.assert_array_equal(store.images, forged)
  store.close()


def test_a_torn_first_add_leaves_an_empty_store(tmp_path):
  layout, path = LAYOUTS[0], str(tmp_path / 'added.bin')
  store = AddedStore(path, layout)
  store._pwrite = failing_pwrite(room=20)  # pylint: disable=protected-access  # inside the header
  with pytest.raises(StoreFull):
    store.append(*_items(layout, 1, 0))
  store._pwrite = os.pwrite  # pylint: disable=protected-access
  store.append(*_items(layout, 1, 1))  # the header is written again with it
  store.close()
  with open(path, 'r+b') as f:
    f.truncate(20)  # as if the process had died during its first add
  store = AddedStore(path, layout)
  assert len(store) == 0
  store.append(*_items(layout, 2, 2))
  store.close()
  _assert_holds(AddedStore(path, layout), [_items(layout, 2, 2)])


def test_a_store_that_cannot_be_created_refuses_adds_and_nothing_else(tmp_path):
  (tmp_path / 'served').write_text('a file where the folder should be')
  store = AddedStore(str(tmp_path / 'served' / 'added.bin'), LAYOUTS[0])
  assert len(store) == 0
  with pytest.raises(StoreFull, match='the add was not stored: .*served cannot be created'):
    store.append(*_items(LAYOUTS[0], 1, 0))
  store.close()


def test_a_read_only_folder_keeps_its_adds_readable_and_refuses_new_ones_saying_why(
    tmp_path, monkeypatch, caplog):
  layout, path = LAYOUTS[0], str(tmp_path / 'added.bin')
  store = AddedStore(path, layout)
  kept = [_items(layout, 2, 0)]
  store.append(*kept[0])
  store.close()
  before = open(path, 'rb').read()
  monkeypatch.setattr(store_lib.os, 'access', lambda p, mode: False)  # as on a read-only mount
  store = AddedStore(path, layout)
  assert 'is not writable: adds will be refused; searches go on' in caplog.text
  _assert_holds(store, kept)
  with pytest.raises(StoreReadOnly, match=r'is not writable; make it writable and restart'):
    store.append(*_items(layout, 1, 1))
  store.close()
  assert open(path, 'rb').read() == before


def test_a_write_refused_as_read_only_is_not_called_a_full_disk(tmp_path):
  layout, path = LAYOUTS[0], str(tmp_path / 'added.bin')
  store = AddedStore(path, layout)
  def read_only(*_):
    raise OSError(errno.EROFS, 'Read-only file system')
  store._pwrite = read_only  # pylint: disable=protected-access
  with pytest.raises(StoreReadOnly, match=r'is not writable \(Read-only file system\); make '
                                          r'it writable and add again'):
    store.append(*_items(layout, 1, 0))
  store.close()


def test_codes_of_another_model_are_refused(tmp_path):
  path = str(tmp_path / 'added.bin')
  store = AddedStore(path, ItemLayout((4, 4, 1), 2, 'class', model='step 100'))
  store.append(*_items(LAYOUTS[0], 1, 0))
  store.close()
  with pytest.raises(StoreError, match=r'holds items of another model .*"step 100".* move'):
    AddedStore(path, ItemLayout((4, 4, 1), 2, 'class', model='step 200'))


def _valid_store_bytes():
  """A store of three adds (2, 1, 3 items) as bytes, and the items."""
  layout = LAYOUTS[0]
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, 'added.bin')
    store = AddedStore(path, layout)
    batches = [_items(layout, n, seed) for seed, n in enumerate([2, 1, 3])]
    for batch in batches:
      store.append(*batch)
    store.close()
    with open(path, 'rb') as f:
      return f.read(), batches



_VALID, _BATCHES = _valid_store_bytes()
_SIZES = [BATCH.size + len(b[1]) * LAYOUTS[0].item_bytes for b in _BATCHES]
_HEADER_END = len(_VALID) - sum(_SIZES)
_EDITS = st.tuples(st.sampled_from(['flip', 'cut', 'insert']),
                   st.integers(0, len(_VALID) - 1), st.binary(min_size=1, max_size=8))


def _edited(edit) -> bytes:
  kind, at, chunk = edit
  if kind == 'flip':
    return _VALID[:at] + bytes([_VALID[at] ^ (chunk[0] or 1)]) + _VALID[at + 1:]
  return _VALID[:at] if kind == 'cut' else _VALID[:at] + chunk + _VALID[at:]


def _open_twice(data: bytes):
  """The images a store of `data` opens to (the same on a second opening), or the one-line
  StoreError it gives, leaving the file as it was."""
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, 'added.bin')
    with open(path, 'wb') as f:
      f.write(data)
    try:
      store = AddedStore(path, LAYOUTS[0])
    except StoreError as e:
      assert '\n' not in str(e) and str(e)
      with open(path, 'rb') as f:
        assert f.read() == data  # refused: left as it was
      return e
    opened = store.images.copy()
    store.close()
    store = AddedStore(path, LAYOUTS[0])
    np.testing.assert_array_equal(store.images, opened)
    store.close()
    return opened


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(data=st.binary(max_size=300))
def test_any_bytes_open_the_same_way_twice_or_give_one_line(data):
  _open_twice(data)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(edit=_EDITS)
def test_a_changed_store_keeps_every_add_before_the_change_or_refuses(edit):
  kind, at, _ = edit
  result = _open_twice(_edited(edit))
  if at < _HEADER_END and kind != 'cut':  # a header that fails its check
    assert isinstance(result, StoreError)
    return
  if isinstance(result, StoreError):
    return
  images = np.concatenate([b[0] for b in _BATCHES])
  np.testing.assert_array_equal(result, images[:len(result)])  # original adds, in order
  ends = _HEADER_END + np.cumsum(_SIZES)
  before = sum(len(b[1]) for b, end in zip(_BATCHES, ends) if end <= at)
  assert len(result) >= before  # every add before the change is kept
