"""Copying out what a damaged added-items store still holds (`python -m hashjax.serve
--workdir=RUN --recover_store`).

The server refuses to open a store whose header fails its check, or whose damage is followed
by intact records, and leaves the file as it is. `recover` reads that file, finds the header's
salt in its JSON text (also when the header's length or CRC field is what was damaged), walks
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


def read_header(data: bytes) -> tuple[bytes, dict | None, int]:
  """(salt, the header's JSON where it passes its CRC else None, the offset where records may
  start) of a store file's bytes. StoreError when no salt can be read: without it no record's
  checksum can be checked."""
  text = data[_HEADER_START:_HEADER_START + (1 << 16)].decode('ascii', 'replace')
  try:
    meta, length = json.JSONDecoder().raw_decode(text)
    end = _HEADER_START + length
    intact = data[end:end + 4] == struct.pack('<I', zlib.crc32(data[_HEADER_START:end]))
    return bytes.fromhex(meta['salt']), meta if intact else None, end + 4
  except (ValueError, KeyError, TypeError, AttributeError):
    found = _SALT.search(data, 0, 1 << 16)
    if found is None:
      raise store_lib.StoreError('the header\'s salt is unreadable, so no record can be '
                                 'checked; nothing was changed') from None
    # The salt is the JSON's last key (sorted keys): '"}' and the CRC end the header.
    return bytes.fromhex(found.group(1).decode()), None, found.end() + 2 + 4


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
    try:
      salt, meta, start = read_header(data)
    except store_lib.StoreError as e:
      raise store_lib.StoreError(f'{path}: {e}') from None
    if meta is not None and meta.get('layout') != json.loads(layout.describe()):
      raise store_lib.StoreError(f'{path} holds items of another model or data; nothing was '
                                 'changed')
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
