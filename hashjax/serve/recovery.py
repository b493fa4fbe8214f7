"""Copying out what a damaged added-items store still holds (`python -m hashjax.serve
--workdir=RUN --recover_store`).

The server refuses to open a store whose header fails its check, or whose damage is followed
by intact records, and leaves the file as it is. `recover` reads that file, finds the header's
salt in its JSON text (also when the header's length or CRC field is what was damaged, and
when one byte of the salt itself is: the records' checksums tell the right one), walks
the records, skipping damaged bytes to the next record that passes its checksum, and writes
every record that checks out into a new store, which then takes the old file's place. The old
file is kept beside it (`added.bin.damaged`, `added.bin.damaged-1`, ...): nothing is deleted.
A crash at any moment leaves either the old file in place or the new one, and the old one kept.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import struct
import zlib

import numpy as np

from hashjax.serve import store as store_lib

_SALT = re.compile(rb'"salt": "([0-9a-f]{32})"')
_HEADER_START = len(store_lib.MAGIC) + 4  # magic, uint32 length, then the JSON text


@dataclasses.dataclass(frozen=True)
class Recovery:
  """What `recover` did: `items` and `records` copied into the new store, `skipped_bytes` of
  the old file (after its header) that belong to no record that checks out, and `damaged`,
  the path the old file is kept at."""
  items: int
  records: int
  skipped_bytes: int
  damaged: str


_SALT_TEXTS = (re.compile(rb'"salt": "([0-9a-f]{32})"'), re.compile(rb'"salt": "(.{32})"', re.S))
_TAIL = 2 + 4  # after the salt's text: '"}' ends the JSON (sorted keys: the salt is last), CRC
_HEX = b'0123456789abcdef'
_PROBES = 8  # record magics tried per candidate salt


def read_header(data: bytes) -> tuple[dict | None, list[tuple[bytes, int]]]:
  """(the header's JSON where it passes its CRC else None, [(salt, offset where records
  start)] candidates). An intact header gives its own salt; a damaged one gives the salt
  text found by its key or just before the first record's magic, and every text that differs
  from one of those in one character (one damaged byte of the salt): `choose_salt` keeps the
  one the records check out with."""
  text = data[_HEADER_START:_HEADER_START + (1 << 16)].decode('ascii', 'replace')
  try:
    meta, length = json.JSONDecoder().raw_decode(text)
    end = _HEADER_START + length
    if data[end:end + 4] == struct.pack('<I', zlib.crc32(data[_HEADER_START:end])):
      return meta, [(bytes.fromhex(meta['salt']), end + 4)]
  except (ValueError, KeyError, TypeError, AttributeError):
    pass
  found = [(m.start(1), m.group(1)) for pattern in _SALT_TEXTS
           for m in [pattern.search(data, 0, 1 << 16)] if m]
  first = data.find(store_lib.BATCH_MAGIC, _HEADER_START)
  if first >= 32 + _TAIL + _HEADER_START:
    found.append((first - _TAIL - 32, data[first - _TAIL - 32:first - _TAIL]))
  candidates = []
  for position, salt_text in found:
    for variant in _variants(salt_text):
      if (variant, position + 32 + _TAIL) not in candidates:
        candidates.append((variant, position + 32 + _TAIL))
  return None, candidates


def _variants(salt_text: bytes):
  """The salts of `salt_text` (32 hex characters) and of each text one character away."""
  texts = [salt_text] + [salt_text[:i] + bytes([c]) + salt_text[i + 1:]
                         for i in range(len(salt_text)) for c in _HEX]
  for text in texts:
    try:
      yield bytes.fromhex(text.decode('ascii'))
    except (UnicodeDecodeError, ValueError):
      continue


def choose_salt(data: bytes, candidates: list[tuple[bytes, int]],
                item_bytes: int) -> tuple[bytes, int]:
  """The first (salt, start) of `candidates` with which a record checks out (among the first
  record magics after its start); StoreError when none does: without the salt no record's
  checksum can be checked."""
  for salt, start in candidates:
    offset = start
    for _ in range(_PROBES):
      if offset < 0 or offset >= len(data):
        break
      if store_lib.intact_record_end(data, offset, salt, item_bytes) is not None:
        return salt, start
      offset = data.find(store_lib.BATCH_MAGIC, offset + 1)
  raise store_lib.StoreError('no record checks out with the header\'s salt, nor with any salt '
                             'one damaged byte away (a store of another model, or its salt '
                             'is unreadable); nothing was changed')


def intact_records(data: bytes, salt: bytes, item_bytes: int,
                   start: int) -> tuple[list[tuple[int, int]], int]:
  """([(offset, end)] of the records from `start` on that pass their checksums, the number of
  bytes in between that belong to none)."""
  records, skipped, offset = [], 0, start
  while offset < len(data):
    end = store_lib.intact_record_end(data, offset, salt, item_bytes)
    if end is None:
      later = data.find(store_lib.BATCH_MAGIC, offset + 1)
      later = len(data) if later == -1 else later
      skipped, offset = skipped + later - offset, later
      continue
    records.append((offset, end))
    offset = end
  return records, skipped


def _free_name(path: str) -> str:
  target, n = f'{path}.damaged', 1
  while os.path.exists(target):
    target, n = f'{path}.damaged-{n}', n + 1
  return target


def recover(path: str, layout: store_lib.ItemLayout) -> Recovery:
  """Replaces the store at `path` (WORKDIR/served/added.bin) with a new one holding every
  record of it that checks out, in order; keeps the old file beside it (see the module
  docstring). StoreError: no such file, another server has it open, it holds another
  model's items, or its salt is unreadable; nothing is changed then."""
  if not os.path.isfile(path):
    raise store_lib.StoreError(f'{path} does not exist: there is nothing to recover')
  served = os.path.dirname(os.path.abspath(path))
  lock = os.open(served, os.O_RDONLY)
  try:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise store_lib.StoreError(f'{path} is in use by a server; stop it first') from None
    with open(path, 'rb') as f:
      data = f.read()
    meta, candidates = read_header(data)
    if meta is not None and meta.get('layout') != json.loads(layout.describe()):
      raise store_lib.StoreError(f'{path} holds items of another model or data; nothing was '
                                 'changed')
    try:
      salt, start = (candidates[0] if meta is not None else
                     choose_salt(data, candidates, layout.item_bytes))
    except store_lib.StoreError as e:
      raise store_lib.StoreError(f'{path}: {e}') from None
    records, skipped = intact_records(data, salt, layout.item_bytes, start)
    if not records and skipped:
      raise store_lib.StoreError(f'{path}: no record checks out (a store of another model?); '
                                 'nothing was changed')
    return _replace(path, layout, data, records, skipped)
  finally:
    os.close(lock)


def _replace(path: str, layout: store_lib.ItemLayout, data: bytes,
             records: list[tuple[int, int]], skipped: int) -> Recovery:
  """Writes the records into a new store beside `path`, keeps the old file under a free
  `.damaged` name (a second link, so `path` never goes missing) and moves the new one in."""
  batch = store_lib.BATCH.size
  rows = [np.frombuffer(data, np.uint8, end - offset - batch, offset + batch)
          for offset, end in records]
  scratch = os.path.join(os.path.dirname(path), 'recovering')
  shutil.rmtree(scratch, ignore_errors=True)
  new = store_lib.AddedStore(os.path.join(scratch, os.path.basename(path)), layout)
  try:
    if rows:
      new.append_rows(np.concatenate(rows).reshape(-1, layout.item_bytes))
  finally:
    new.close()
  damaged = _free_name(path)
  os.link(path, damaged)
  if rows:
    os.replace(os.path.join(scratch, os.path.basename(path)), path)
  else:
    os.remove(path)  # nothing checked out: an empty store is no file
  shutil.rmtree(scratch)
  folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
  try:
    os.fsync(folder)
  finally:
    os.close(folder)
  return Recovery(items=sum(len(r) for r in rows) // layout.item_bytes, records=len(records),
                  skipped_bytes=skipped, damaged=damaged)
