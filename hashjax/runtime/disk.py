"""Writes that a full disk cannot turn into a crash or a half-written file, and the signs of
a full disk (no space, over quota) in the forms the OS, orbax and TensorStore give them."""

from __future__ import annotations

import errno
import logging
import os
import re

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class OutputNotWritten(OSError):
  """A job's output file that a full disk kept out (`str()`: its path); `results` holds what
  the job would have returned."""

  def __init__(self, path: str, results):
    super().__init__(path)
    self.results = results

  def __str__(self) -> str:
    return str(self.args[0])


_RESOURCE_EXHAUSTED = re.compile(r"RESOURCE_EXHAUSTED.*os_error_code='?(\d+)'?", re.S)


def is_disk_full_error(error: BaseException) -> bool:
  """Whether `error` (or an exception it was raised from) means 'no space' or 'over quota'."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
      return True
    match = _RESOURCE_EXHAUSTED.search(str(error))
    if match and int(match.group(1)) in DISK_FULL_ERRNOS:
      return True
    error = error.__cause__ or error.__context__
  return False


def directory_bytes(path: str) -> int:
  """Bytes of all files under `path` (0 if it does not exist)."""
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.lstat(os.path.join(root, name)).st_size
      except FileNotFoundError:
        pass  # deleted while we walked (a background delete)
  return total


def free_bytes(path: str) -> int:
  """Bytes available to this user on the file system holding `path` (statvfs f_bavail)."""
  st = os.statvfs(path)
  return st.f_bavail * st.f_frsize


def write_or_warn(path: str, write) -> bool:
  """Runs `write(tmp_path)` and moves the file into place; a full disk or quota gives a
  warning (and False) instead of an exception, and never leaves a half-written `path`."""
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    write(tmp)
    os.replace(tmp, path)
    return True
  except OSError as e:
    if not is_disk_full_error(e):
      raise
    if os.path.exists(tmp):
      os.remove(tmp)
    log.warning('could not write %s: %s; training continues', path, short_error(e))
    return False


def append_or_warn(path: str, text: str) -> bool:
  """Appends `text` to `path`; a full disk gives a warning (and False), not an exception,
  and a partly written append is cut off again, so the file holds only whole lines."""
  size = os.path.getsize(path) if os.path.exists(path) else 0
  try:
    with open(path, 'a') as f:
      f.write(text)
    return True
  except OSError as e:
    if not is_disk_full_error(e):
      raise
    with open(path, 'r+') as f:
      f.truncate(size)
    log.warning('could not append to %s: %s', path, short_error(e))
    return False


def short_error(error: BaseException) -> str:
  text = ' '.join(str(error).split())
  return text if len(text) <= 200 else text[:200] + '…'
