"""The append-only store of images added to a served database (`WORKDIR/served/added.bin`).

Layout: a header (magic `HJSTORE2`, uint32 length, a JSON description: the item layout, the
model that encoded the codes, and a random salt; uint32 CRC-32 of it), then one record per
acknowledged add: magic `HJB2`, uint32 item count (≥ 1), uint32 CRC-32 of (salt, the record's
offset, count, payload), payload. An item is its label (int64 class id, L uint8 multi-hot flags,
or nothing), its uint8 image [H, W, C] and its packed code [P], so added images are never
encoded again when the service restarts. The salt and offset in the checksum mean no bytes of
an uploaded image can pass for a record.

A record is written with one `pwrite` (unbuffered) and fsynced before the add is acknowledged;
the file and its folder are created, and fsynced, with the first add. After a crash an
incomplete or corrupt *last* record (a write that was never acknowledged) is cut off when the
store is opened, and so is a file that ends inside a header of this layout (a torn first add).
A header that fails its check, and damage followed by intact records, are refused with one
line naming the file and the offset, and the file is left as it is; `hashjax.serve.recovery`
copies out every record that still checks out (`python -m hashjax.serve --workdir=RUN
--recover_store`). (A
last acknowledged record damaged later, e.g. by bit rot, cannot be told from a torn write: it
is cut off with a warning.) A write the disk refuses (full, quota) is cut off again at once, so
the store stays valid and searches go on; so does a store that cannot even be created. One
server at a time: the `served` folder is locked (`flock`) while the store is open.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import struct
import zlib

import numpy as np

from hashjax.runtime import disk

log = logging.getLogger(__name__)

FILE = os.path.join('served', 'added.bin')
MAGIC = b'HJSTORE2'
BATCH = struct.Struct('<4sII')  # magic, item count, CRC-32 of (salt, offset, count, payload)
BATCH_MAGIC = b'HJB2'
LABEL_KINDS = ('none', 'class', 'multi-hot')


def recovery_hint(path: str) -> str:
  """What to run for a damaged store at `path` (WORKDIR/served/added.bin)."""
  workdir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  return ('the file is left as it is; copy out every add that still checks out with: python -m '
          f'hashjax.serve --workdir={workdir} --recover_store')


def checksum(salt: bytes, offset: int, count: int, payload) -> int:
  """CRC-32 of a record: (salt, its offset, item count, payload)."""
  return zlib.crc32(payload, zlib.crc32(salt + struct.pack('<QI', offset, count)))


def intact_record_end(data: bytes, offset: int, salt: bytes, item_bytes: int) -> int | None:
  """The end of a whole record at `offset` of `data` that passes its checksum, else None."""
  if len(data) - offset < BATCH.size:
    return None
  magic, count, crc = BATCH.unpack_from(data, offset)
  end = offset + BATCH.size + count * item_bytes
  if magic != BATCH_MAGIC or count < 1 or end > len(data):
    return None
  payload = memoryview(data)[offset + BATCH.size:end]
  return end if checksum(salt, offset, count, payload) == crc else None


class StoreError(ValueError):
  """A store that cannot be opened as it is (damaged, another run's, locked)."""


class StoreFull(OSError):
  """The disk refused an add; nothing of it was kept and the store is unchanged."""


class StoreReadOnly(StoreFull):
  """The store's folder cannot be written (read-only, no permission): adds are refused,
  searches go on."""


_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


@dataclasses.dataclass(frozen=True)
class ItemLayout:
  """What one stored item holds: image uint8 [H, W, C], packed code uint8 [code_bytes] and a
  label of `label_kind` ('class': int64 id, −1 for none; 'multi-hot': uint8 [num_labels]);
  `model` names the model that encoded the codes (a store of another model is refused)."""
  image_shape: tuple
  code_bytes: int
  label_kind: str = 'none'
  num_labels: int = 0
  model: str = ''

  @property
  def label_bytes(self) -> int:
    return {'none': 0, 'class': 8, 'multi-hot': self.num_labels}[self.label_kind]

  @property
  def item_bytes(self) -> int:
    return self.label_bytes + int(np.prod(self.image_shape)) + self.code_bytes

  def __post_init__(self):
    object.__setattr__(self, 'image_shape', tuple(int(d) for d in self.image_shape))
    if self.label_kind not in LABEL_KINDS:
      raise ValueError(f'label_kind={self.label_kind!r}; accepted: {", ".join(LABEL_KINDS)}')

  def describe(self) -> bytes:
    return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()


class AddedStore:
  """The items added to a served database, in order: `images` uint8 [M, H, W, C], `codes`
  uint8 [M, P], `labels` ([M] int64 or [M, L] uint8, or None)."""

  def __init__(self, path: str, layout: ItemLayout):
    self.path, self.layout = path, layout
    self._fd, self._lock, self._size, self._salt = None, None, 0, b''
    self._pwrite = os.pwrite  # every write goes through this (tests make it fail)
    self._unavailable = None  # why adds are refused (a store that could not be created)
    self._empty_buffers()
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      self._lock = os.open(os.path.dirname(path), os.O_RDONLY)
    except OSError as e:
      self._unavailable = f'{os.path.dirname(path)} cannot be created ({e.strerror or e})'
      log.warning('%s: adds are refused until it can be; searches go on', self._unavailable)
      return
    if not os.access(os.path.dirname(path), os.W_OK):
      self._unavailable = f'{os.path.dirname(path)} is not writable'
      log.warning('%s: adds will be refused; searches go on', self._unavailable)
    try:
      fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.close()
      raise StoreError(f'{path} is in use by another server; stop it first') from None
    opened = False
    try:
      if os.path.exists(path):
        # Unbuffered: a write the disk refused must not linger in a buffer and reach the file.
        self._fd = os.open(path, os.O_RDONLY if self._unavailable else os.O_RDWR)
        self._load()
      opened = True
    finally:
      if not opened:  # a damaged or foreign store: release the lock, then the error goes on
        self.close()

  def close(self) -> None:
    for fd in (self._fd, self._lock):
      if fd is not None:
        os.close(fd)
    self._fd = self._lock = None

  def __len__(self) -> int:
    return len(self.codes)

  def _empty_buffers(self) -> None:
    layout, self._count = self.layout, 0
    self._images = np.zeros((0,) + tuple(layout.image_shape), np.uint8)
    self._codes = np.zeros((0, layout.code_bytes), np.uint8)
    self._labels = np.zeros((0, layout.num_labels) if layout.label_kind == 'multi-hot' else 0,
                            np.uint8 if layout.label_kind == 'multi-hot' else np.int64)

  def _load(self) -> None:
    data = self._file_bytes()
    offset = self._check_header(data)
    if offset is None:  # empty, or the first add's write was torn: nothing was acknowledged
      if data:
        log.warning('%s: cut off the torn first add (never acknowledged)', self.path)
      self._truncate(0)
      return
    batches = []
    while offset < len(data):
      end = self._record_end(data, offset)
      if end is None:
        break
      batches.append(np.frombuffer(data, np.uint8, end - offset - BATCH.size,
                                   offset + BATCH.size))
      offset = end
    if offset < len(data):
      log.warning('%s: cut off %d bytes of an add that was never acknowledged (a crash '
                  'while writing it)', self.path, len(data) - offset)
      self._truncate(offset)
    self._size = offset
    self._set_rows((np.concatenate(batches) if batches else np.zeros(0, np.uint8)).reshape(
        -1, self.layout.item_bytes))

  def _file_bytes(self) -> bytes:
    with open(self.path, 'rb') as f:
      return f.read()

  def _write_at(self, data: bytes, offset: int) -> None:
    """All of `data` at `offset`, then fsync; OSError (e.g. ENOSPC) may leave part of it."""
    view, done = memoryview(data), 0
    while done < len(view):
      done += self._pwrite(self._fd, view[done:], offset + done)
    os.fsync(self._fd)

  def _meta(self, salt: bytes) -> bytes:
    return json.dumps({'layout': json.loads(self.layout.describe()), 'salt': salt.hex()},
                      sort_keys=True).encode()

  def _header(self) -> bytes:
    """A new header with a fresh salt (written with the first add)."""
    self._salt = os.urandom(16)
    meta = self._meta(self._salt)
    return MAGIC + struct.pack('<I', len(meta)) + meta + struct.pack('<I', zlib.crc32(meta))

  def _check_header(self, data: bytes) -> int | None:
    """The offset of the first record; None for an empty file or a torn first write (a file
    that ends inside a header of this layout: the first add writes header and record at once).
    A header that fails its check is damage, whatever follows it."""
    size = len(MAGIC) + 4
    if not MAGIC.startswith(data[:len(MAGIC)]):
      if b'"salt": "' in data[:1 << 16]:  # the rest of a header: its magic is what broke
        raise StoreError(f'{self.path} is damaged at byte 0 (its header\'s magic '
                         f'{bytes(data[:len(MAGIC)])!r} is not {MAGIC!r}); '
                         f'{recovery_hint(self.path)}')
      raise StoreError(f'{self.path} is not an added-items store; move it away to start empty')
    if len(data) < size:
      return None
    (length,) = struct.unpack_from('<I', data, len(MAGIC))
    if len(data) < size + length + 4 and length == len(self._meta(b'\0' * 16)):
      return None
    meta = data[size:size + length]
    if len(data) < size + length + 4 or struct.unpack_from(
        '<I', data, size + length)[0] != zlib.crc32(meta):
      raise StoreError(f'{self.path} is damaged at byte {len(MAGIC)} (its header fails its '
                       f'check); {recovery_hint(self.path)}')
    meta = json.loads(meta)
    if meta['layout'] != json.loads(self.layout.describe()):
      raise StoreError(f'{self.path} holds items of another model or data '
                       f'({json.dumps(meta["layout"], sort_keys=True)}); this run needs '
                       f'{self.layout.describe().decode()}: move {self.path} away (its images '
                       'can be added again)')
    self._salt = bytes.fromhex(meta['salt'])
    return size + length + 4

  def _checksum(self, offset: int, count: int, payload) -> int:
    return checksum(self._salt, offset, count, payload)

  def _valid_end(self, data: bytes, offset: int) -> int | None:
    return intact_record_end(data, offset, self._salt, self.layout.item_bytes)

  def _record_end(self, data: bytes, offset: int) -> int | None:
    """The end of the record at `offset`; None when it is a torn last write (no intact record
    follows). Damage followed by intact records is a `StoreError`, and the file is left
    untouched: cutting it off would lose acknowledged adds."""
    end = self._valid_end(data, offset)
    if end is not None:
      return end
    later = data.find(BATCH_MAGIC, offset + 1)
    while later != -1:
      if self._valid_end(data, later) is not None:
        raise StoreError(f'{self.path} is damaged at byte {offset} (not a torn last write); '
                         f'{recovery_hint(self.path)}')
      later = data.find(BATCH_MAGIC, later + 1)
    return None

  def _set_rows(self, rows: np.ndarray) -> None:
    """Splits item rows into the growing buffers (capacity doubles; views stay valid)."""
    layout, count = self.layout, len(rows)
    start, pixels = layout.label_bytes, int(np.prod(layout.image_shape))
    needed = self._count + count
    if needed > len(self._codes):
      capacity = max(needed, 2 * len(self._codes), 64)
      grow = lambda a: np.concatenate([a[:self._count], np.zeros(  # noqa: E731
          (capacity - self._count,) + a.shape[1:], a.dtype)])
      self._images, self._codes, self._labels = map(grow, (self._images, self._codes,
                                                            self._labels))
    new = slice(self._count, needed)
    self._images[new] = rows[:, start:start + pixels].reshape((count,) + layout.image_shape)
    self._codes[new] = rows[:, start + pixels:]
    if layout.label_kind == 'class':
      self._labels[new] = rows[:, :8].copy().view('<i8').reshape(count)
    elif layout.label_kind == 'multi-hot':
      self._labels[new] = rows[:, :start]
    self._count = needed

  @property
  def images(self) -> np.ndarray:
    return self._images[:self._count]

  @property
  def codes(self) -> np.ndarray:
    return self._codes[:self._count]

  @property
  def labels(self) -> np.ndarray | None:
    return None if self.layout.label_kind == 'none' else self._labels[:self._count]

  def _truncate(self, size: int) -> None:
    if self._unavailable:  # read-only: the torn bytes stay on disk, unread
      return
    os.ftruncate(self._fd, size)
    os.fsync(self._fd)

  def _rows(self, images_MxHxWxC, codes_MxP, labels) -> np.ndarray:
    layout, count = self.layout, len(codes_MxP)
    parts = []
    if layout.label_kind == 'class':
      parts.append(np.asarray(labels, '<i8').reshape(count, 1).view(np.uint8))
    elif layout.label_kind == 'multi-hot':
      parts.append(np.asarray(labels, np.uint8).reshape(count, layout.num_labels))
    parts += [np.asarray(images_MxHxWxC, np.uint8).reshape(count, -1),
              np.asarray(codes_MxP, np.uint8).reshape(count, layout.code_bytes)]
    return np.concatenate(parts, axis=1)

  def _create(self) -> None:
    """Opens a new store file and fsyncs its folder (the name survives a power loss)."""
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    os.fsync(self._lock)

  def append(self, images_MxHxWxC: np.ndarray, codes_MxP: np.ndarray, labels=None) -> None:
    """Writes one record (M ≥ 1 items) and fsyncs it; when this returns, the items survive a
    crash. A disk that refuses the write raises `StoreFull` and the store stays as it was."""
    self.append_rows(self._rows(images_MxHxWxC, codes_MxP, labels))

  def append_rows(self, rows: np.ndarray) -> None:
    """`append` of items already laid out as stored: uint8 [M, item_bytes], M ≥ 1."""
    if self._unavailable:
      raise StoreReadOnly(f'the add was not stored: {self._unavailable}; make it writable and '
                          'restart the server')
    try:
      if self._fd is None:
        self._create()
      header = self._header() if self._size == 0 else b''  # the first add writes it
      offset = self._size + len(header)
      payload = rows.tobytes()
      self._write_at(header + BATCH.pack(BATCH_MAGIC, len(rows), self._checksum(
          offset, len(rows), payload)) + payload, self._size)
    except OSError as e:
      try:
        if self._fd is not None:
          self._truncate(self._size)
      except OSError:
        pass  # the torn record is cut off when the store is next opened
      if e.errno in _NOT_WRITABLE:
        raise StoreReadOnly(f'the add was not stored: {os.path.dirname(self.path)} is not '
                            f'writable ({e.strerror}); make it writable and add again') from None
      raise StoreFull(f'the add was not stored ({e.strerror or disk.short_error(e)}); free '
                      f'space on {os.path.dirname(self.path)} and add again') from None
    self._size = offset + BATCH.size + len(payload)
    self._set_rows(rows)
