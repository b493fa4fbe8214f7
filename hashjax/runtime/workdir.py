"""A run's directory: created or refused in one line, held by one run at a time, and its
config.json kept as the record of the settings its checkpoints were trained with.

`hold(workdir)` makes sure the workdir is a writable directory and takes `<workdir>/run.lock`
(an flock: the kernel releases it when the holding process ends, also after kill -9, so a
dead run never blocks the next one). `check_resume(workdir, config, resumable)` compares
the settings of a resumed run with the run's config.json: a difference outside `resumable`
is a `WorkdirError` naming the keys, and config.json stays as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from typing import Any, Iterator

from hashjax.runtime import parallel
from hashjax.runtime.errors import WorkdirError

LOCK_NAME = 'run.lock'
_MISSING = '<absent>'


def _make(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except FileExistsError:
    raise WorkdirError(f'--workdir {workdir!r} is a file, not a directory; pass a directory '
                       'path') from None
  except NotADirectoryError:
    raise WorkdirError(f'--workdir {workdir!r} lies under a file, not a directory; pass a '
                       'directory path') from None
  except OSError as e:
    raise WorkdirError(f'cannot create --workdir {workdir!r}: {e.strerror}') from None
  if not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir {workdir!r} is not a directory; pass a directory path')


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Creates `workdir` if needed and holds its lock while the block runs (process 0 only:
  the processes of one job share it). Raises WorkdirError (one line) for a workdir that is
  a file, lies under a file, cannot be written, or is held by another live run. A workdir
  this call created is removed again when the block fails before writing anything in it (a
  run refused for its settings leaves no trace)."""
  created = not os.path.exists(workdir)
  _make(workdir)
  if not parallel.is_main_process():
    yield
    return
  path = os.path.join(workdir, LOCK_NAME)
  try:
    handle = open(path, 'a+')  # pylint: disable=consider-using-with
  except OSError as e:
    raise WorkdirError(f'cannot write in --workdir {workdir!r}: {e.strerror}') from None
  with handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or 'another process'
      raise WorkdirError(f'--workdir {workdir!r} is in use by {holder}; wait for that run to '
                         'end, or pass another --workdir') from None
    _record_holder(handle)
    try:
      yield  # closing the handle releases the lock
    except BaseException:
      if created and os.listdir(workdir) == [LOCK_NAME]:
        os.remove(path)
        os.rmdir(workdir)
      raise


def _record_holder(handle) -> None:
  """Writes who holds the lock (for the message of a second run), unbuffered: a full disk
  only loses this note, and leaves nothing for the close to fail on."""
  try:
    os.ftruncate(handle.fileno(), 0)
    os.pwrite(handle.fileno(), f'process {os.getpid()} on {socket.gethostname()}\n'.encode(), 0)
  except OSError:
    pass


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} → {'a.b': 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def check_resume(workdir: str, config: dict[str, Any], resumable: frozenset[str],
                 added: dict[str, Any] | None = None) -> None:
  """Raises WorkdirError when `config` differs from `<workdir>/config.json` in a key outside
  `resumable` (dotted names; 'checkpoint' covers every 'checkpoint.*'). Call it only when
  the run resumes from a checkpoint. No config.json (a run from before it was written): no
  check. `added`: settings introduced after older runs were made (dotted name → the value
  those runs had); config.json without one of them counts as having that value."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      old = flatten(json.load(f))
  except FileNotFoundError:
    return
  except (OSError, ValueError) as e:
    raise WorkdirError(f'{path} cannot be read ({e}); restore it, or pass another '
                       '--workdir') from None
  old = {**{k: v for k, v in (added or {}).items() if k not in old}, **old}
  new = flatten(json.loads(json.dumps(config)))
  changed = [k for k in sorted(old.keys() | new.keys())
             if old.get(k, _MISSING) != new.get(k, _MISSING)
             and k not in resumable and k.split('.')[0] not in resumable]
  if changed:
    shown = ', '.join(f'{k} ({old.get(k, _MISSING)!r} → {new.get(k, _MISSING)!r})'
                      for k in changed)
    raise WorkdirError(f'resuming the run in {workdir} with settings its checkpoints were not '
                       f'trained with: {shown}; resume with the values in its config.json, '
                       'or pass another --workdir')
