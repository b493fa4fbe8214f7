import os
import re
import shutil

import pytest

from hashjax.serve import recovery
from hashjax.serve.__main__ import run as serve_command
from hashjax.serve.store import BATCH, AddedStore, ItemLayout, StoreError
from tests.serve.test_store import _assert_holds, _items

LAYOUT = ItemLayout((2, 2, 1), 2, 'class')
RECORD = BATCH.size + LAYOUT.item_bytes  # one add of one item


def _store_of_single_adds(path, count):
  """A store of `count` acknowledged adds of one item each; returns the added batches."""
  batches = [_items(LAYOUT, 1, seed) for seed in range(count)]
  store = AddedStore(path, LAYOUT)
  for batch in batches:
    store.append(*batch)
  store.close()
  return batches


def _flip(path, offset):
  with open(path, 'r+b') as f:
    f.seek(offset)
    byte = f.read(1)[0]
    f.seek(offset)
    f.write(bytes([byte ^ 0xff]))


@pytest.fixture(scope='module')
def thousand_adds(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('store') / 'served' / 'added.bin')
  return path, _store_of_single_adds(path, 1000)


@pytest.mark.parametrize('offset, where', [(10, 'length'), (11, 'length'), (8, 'length'),
                                           (14, 'the JSON text'), (-1, 'its CRC')])
def test_a_damaged_header_is_refused_untouched_and_every_add_is_recovered(
    thousand_adds, tmp_path, offset, where):
  original, batches = thousand_adds
  path = str(tmp_path / 'served' / 'added.bin')
  os.makedirs(os.path.dirname(path))
  shutil.copy(original, path)
  header_end = os.path.getsize(path) - 1000 * RECORD
  _flip(path, offset if offset >= 0 else header_end + offset)  # -1: the CRC's last byte
  damaged = open(path, 'rb').read()
  with pytest.raises(StoreError, match=r'added.bin is damaged at byte 8 \(its header fails its '
                                       r'check\); the file is left as it is; copy out every '
                                       r'add .* --recover_store$'):
    AddedStore(path, LAYOUT)
  assert open(path, 'rb').read() == damaged, where  # nothing was cut off
  done = recovery.recover(path, LAYOUT)
  assert (done.items, done.records, done.skipped_bytes) == (1000, 1000, 0)
  assert open(done.damaged, 'rb').read() == damaged and done.damaged == path + '.damaged'
  store = AddedStore(path, LAYOUT)
  _assert_holds(store, batches)
  store.append(*_items(LAYOUT, 1, 5000))  # and it takes adds again
  store.close()
  assert sorted(os.listdir(tmp_path / 'served')) == ['added.bin', 'added.bin.damaged']


def test_every_single_bit_flip_of_the_header_is_refused_then_fully_recovered(tmp_path):
  original = str(tmp_path / 'original.bin')
  batches = _store_of_single_adds(original, 20)
  header_end = os.path.getsize(original) - 20 * RECORD
  clean = open(original, 'rb').read()
  not_refused, lost = [], []
  for offset in range(header_end):  # magic, length, every byte of the JSON (salt too), CRC
    for bit in (0, 6):
      folder = tmp_path / f'{offset}-{bit}'
      folder.mkdir()
      path = str(folder / 'added.bin')
      damaged = bytearray(clean)
      damaged[offset] ^= 1 << bit
      open(path, 'wb').write(damaged)
      try:
        AddedStore(path, LAYOUT).close()
        not_refused.append((offset, bit))
        continue
      except StoreError as e:
        assert open(path, 'rb').read() == damaged
        assert re.search(r'is damaged at byte \d+ .*--recover_store$', str(e)), str(e)
      done = recovery.recover(path, LAYOUT)
      if (done.items, done.skipped_bytes) != (20, 0):
        lost.append((offset, bit, done.items))
  assert not not_refused and not lost
  store = AddedStore(path, LAYOUT)  # the last one, recovered, holds every add in order
  _assert_holds(store, batches)
  store.close()


def test_damage_between_records_loses_only_the_damaged_record(tmp_path):
  path = str(tmp_path / 'added.bin')
  batches = _store_of_single_adds(path, 5)
  header_end = os.path.getsize(path) - 5 * RECORD
  _flip(path, header_end + 2 * RECORD + BATCH.size + 3)  # inside the third add's payload
  with pytest.raises(StoreError, match=f'damaged at byte {header_end + 2 * RECORD} '):
    AddedStore(path, LAYOUT)
  done = recovery.recover(path, LAYOUT)
  assert (done.items, done.records, done.skipped_bytes) == (4, 4, RECORD)
  store = AddedStore(path, LAYOUT)
  _assert_holds(store, batches[:2] + batches[3:])
  store.close()
  again = recovery.recover(path, LAYOUT)  # a second run keeps the first one's old file too
  assert again.damaged == path + '.damaged-1' and os.path.exists(path + '.damaged')


def test_a_store_without_a_readable_salt_or_of_another_model_is_left_alone(tmp_path):
  path = str(tmp_path / 'added.bin')
  _store_of_single_adds(path, 3)
  before = open(path, 'rb').read()
  with pytest.raises(StoreError, match='holds items of another model or data; nothing was '
                                       'changed$'):
    recovery.recover(path, ItemLayout((2, 2, 1), 3, 'class'))
  crc = len(before) - 3 * RECORD - 1
  _flip(path, crc)  # a header that fails its CRC can no longer say whose items it holds
  with pytest.raises(StoreError, match='no record checks out .*; nothing was changed$'):
    recovery.recover(path, ItemLayout((2, 2, 1), 3, 'class'))
  _flip(path, crc)
  assert open(path, 'rb').read() == before
  salt_at = before.index(b'"salt": "') + len(b'"salt": "')
  with open(path, 'r+b') as f:
    f.seek(salt_at)
    f.write(b'zz')
  damaged = open(path, 'rb').read()
  with pytest.raises(StoreError, match="no record checks out with the header's salt, nor with "
                                       'any salt one damaged byte away .*; nothing was '
                                       'changed$'):
    recovery.recover(path, LAYOUT)  # two damaged bytes of the salt
  assert open(path, 'rb').read() == damaged and os.listdir(tmp_path) == ['added.bin']
  with pytest.raises(StoreError, match='does not exist: there is nothing to recover'):
    recovery.recover(str(tmp_path / 'none.bin'), LAYOUT)


def test_a_torn_first_add_is_still_cut_off_without_recovery(tmp_path):
  path = str(tmp_path / 'added.bin')
  _store_of_single_adds(path, 1)
  header_end = os.path.getsize(path) - RECORD
  for cut in (9, 12, header_end - 1):  # inside the length field, the JSON, the CRC
    shutil.copy(path, tmp_path / 'copy.bin')
    with open(tmp_path / 'copy.bin', 'r+b') as f:
      f.truncate(cut)
    store = AddedStore(str(tmp_path / 'copy.bin'), LAYOUT)
    assert len(store) == 0
    store.close()
    assert os.path.getsize(tmp_path / 'copy.bin') == 0


def test_the_recover_store_command(served_run, tmp_path, capsys):
  from hashjax.serve import service  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  shutil.copytree(served_run, workdir, ignore=shutil.ignore_patterns('served'))
  layout = service.store_layout(workdir)
  path = os.path.join(workdir, 'served', 'added.bin')
  store = AddedStore(path, layout)
  for seed in range(3):
    store.append(*_items(layout, 2, seed))
  store.close()
  _flip(path, 10)
  assert serve_command([f'--workdir={workdir}']) == 2  # the server refuses to start
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'added.bin is damaged at byte 8' in err
  assert f'python -m hashjax.serve --workdir={workdir} --recover_store' in err
  assert serve_command([f'--workdir={workdir}', '--recover_store']) == 0
  assert capsys.readouterr().out == (
      f'recovered 6 added items (3 records) into {path}; 0 damaged bytes skipped; the old file '
      f'is kept at {path}.damaged\n')
  store = AddedStore(path, layout)
  assert len(store) == 6
  store.close()
  assert serve_command([f'--workdir={tmp_path}/none', '--recover_store']) == 2
