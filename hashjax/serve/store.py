"""The append-only store of images added to a served database (`WORKDIR/served/added.bin`).

Layout: a header (magic `HJSTORE1`, uint32 length, the JSON description of an item, uint32
CRC-32 of it), then one batch record per acknowledged add: magic `HJB1`, uint32 item count,
uint32 CRC-32 of the payload, payload. An item is its label (int64 class id, L uint8 multi-hot
flags, or nothing), its uint8 image [H, W, C] and its packed code [P], so added images are
never encoded again when the service restarts.

A batch is written with one `write` and fsynced before the add is acknowledged. After a crash,
an incomplete or corrupt *last* record (a write that was never acknowledged) is cut off when
the store is opened; damage anywhere else is reported and the file is left as it is. A write
the disk refuses (full, quota) is cut off again at once, so the store stays valid and searches
go on. One server at a time: the file is locked (`flock`) while open.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import struct
import zlib

import numpy as np

from hashjax import disk

log = logging.getLogger(__name__)

FILE = os.path.join('served', 'added.bin')
_MAGIC = b'HJSTORE1'
_BATCH = struct.Struct('<4sII')  # magic, item count, CRC-32 of the payload
_BATCH_MAGIC = b'HJB1'
LABEL_KINDS = ('none', 'class', 'multi-hot')


class StoreError(ValueError):
  """A store that cannot be opened as it is (damaged, another run's, locked)."""


class StoreFull(OSError):
  """The disk refused an add; nothing of it was kept and the store is unchanged."""


@dataclasses.dataclass(frozen=True)
class ItemLayout:
  """What one stored item holds: image uint8 [H, W, C], packed code uint8 [code_bytes] and a
  label of `label_kind` ('class': int64 id, −1 for none; 'multi-hot': uint8 [num_labels])."""
  image_shape: tuple
  code_bytes: int
  label_kind: str = 'none'
  num_labels: int = 0

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
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Unbuffered: a write the disk refused must not linger in a buffer and reach the file later.
    self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    self._pwrite = os.pwrite  # every write goes through this (tests make it fail)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(self._fd)
      raise StoreError(f'{path} is in use by another server; stop it first') from None
    try:
      self._load()
    except Exception:
      os.close(self._fd)
      raise

  def close(self) -> None:
    os.close(self._fd)

  def __len__(self) -> int:
    return len(self.codes)

  def _load(self) -> None:
    layout, self._count = self.layout, 0
    self._images = np.zeros((0,) + tuple(layout.image_shape), np.uint8)
    self._codes = np.zeros((0, layout.code_bytes), np.uint8)
    self._labels = np.zeros((0, layout.num_labels) if layout.label_kind == 'multi-hot' else 0,
                            np.uint8 if layout.label_kind == 'multi-hot' else np.int64)
    data = self._file_bytes()
    if not data:
      self._write_header()
      data = self._file_bytes()
    offset = self._check_header(data)
    batches = []
    while offset < len(data):
      end = self._record_end(data, offset)
      if end is None:
        break
      batches.append(np.frombuffer(data, np.uint8, end - offset - _BATCH.size,
                                   offset + _BATCH.size))
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

  def _write_header(self) -> None:
    meta = self.layout.describe()
    header = _MAGIC + struct.pack('<I', len(meta)) + meta + struct.pack('<I', zlib.crc32(meta))
    self._write_at(header, 0)

  def _check_header(self, data: bytes) -> int:
    size = len(_MAGIC) + 4
    if data[:len(_MAGIC)] != _MAGIC or len(data) < size:
      raise StoreError(f'{self.path} is not an added-items store; move it away to start empty')
    (length,) = struct.unpack_from('<I', data, len(_MAGIC))
    meta = data[size:size + length]
    crc = data[size + length:size + length + 4]
    if len(crc) < 4 or struct.unpack('<I', crc)[0] != zlib.crc32(meta):
      raise StoreError(f'{self.path} has a damaged header; move it away to start empty')
    if meta != self.layout.describe():
      raise StoreError(f'{self.path} holds items of another model ({meta.decode()}); this '
                       f'run needs {self.layout.describe().decode()}')
    return size + length + 4

  def _valid_end(self, data: bytes, offset: int) -> int | None:
    """The end of a whole, intact batch record at `offset`, else None."""
    if len(data) - offset < _BATCH.size:
      return None
    magic, count, crc = _BATCH.unpack_from(data, offset)
    end = offset + _BATCH.size + count * self.layout.item_bytes
    if magic != _BATCH_MAGIC or end > len(data):
      return None
    return end if zlib.crc32(memoryview(data)[offset + _BATCH.size:end]) == crc else None

  def _record_end(self, data: bytes, offset: int) -> int | None:
    """The end of the batch record at `offset`; None when it is a torn last write (no intact
    record follows). Damage followed by intact records is a `StoreError`, and the file is
    left untouched: cutting it off would lose acknowledged adds."""
    end = self._valid_end(data, offset)
    if end is not None:
      return end
    later = data.find(_BATCH_MAGIC, offset + 1)
    while later != -1:
      if self._valid_end(data, later) is not None:
        raise StoreError(f'{self.path} is damaged at byte {offset} (not a torn last write); '
                         'move it away or restore it from a backup')
      later = data.find(_BATCH_MAGIC, later + 1)
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
    os.ftruncate(self._fd, size)
    os.fsync(self._fd)

  def append(self, images_MxHxWxC: np.ndarray, codes_MxP: np.ndarray, labels=None) -> None:
    """Writes one batch and fsyncs it; when this returns, the items survive a crash. A disk
    that refuses the write raises `StoreFull` and leaves the store as it was."""
    layout, count = self.layout, len(codes_MxP)
    parts = []
    if layout.label_kind == 'class':
      parts.append(np.asarray(labels, '<i8').reshape(count, 1).view(np.uint8))
    elif layout.label_kind == 'multi-hot':
      parts.append(np.asarray(labels, np.uint8).reshape(count, layout.num_labels))
    parts += [np.asarray(images_MxHxWxC, np.uint8).reshape(count, -1),
              np.asarray(codes_MxP, np.uint8).reshape(count, layout.code_bytes)]
    rows = np.concatenate(parts, axis=1)
    payload = rows.tobytes()
    record = _BATCH.pack(_BATCH_MAGIC, count, zlib.crc32(payload)) + payload
    try:
      self._write_at(record, self._size)
    except OSError as e:
      try:
        self._truncate(self._size)
      except OSError:
        pass  # the torn record is cut off when the store is next opened
      raise StoreFull(f'the add was not stored ({e.strerror or disk.short_error(e)}); free '
                      f'space on {os.path.dirname(self.path)} and add again') from None
    self._size += len(record)
    self._set_rows(rows)
