"""What a run's items were read from, and a check that it is still there as it was.

A `folder:` or `list:` data set numbers its items by its files: delete, add or replace a file
and item 17 is another image. A run records the files it read (each one's name and size in
bytes) in `WORKDIR/data.json` when it starts; resuming it, serving it, searching it with
pictures and updating from it compare the data set with that record, and a difference is one
`DataError` line naming what changed (so codes, checkpoints and pictures are never matched to
other images). Other sources (digits, npz, tfds) record nothing: their items do not move
under a run. A run without data.json (made before it was written) is not checked.

A file edited in place to the same size is not noticed; a copy of the folder to another
machine (new times, same files) is accepted.
"""

from __future__ import annotations

import json
import os

from hashjax.data import files as files_lib
from hashjax.runtime import plumbing
from hashjax.runtime.errors import DataError

DATA_FILE = 'data.json'
EXAMPLES = 3  # names shown per kind of change


def _folder_files(root: str) -> dict[str, int]:
  paths, _, _ = files_lib.list_images(root)
  return {p: os.path.getsize(os.path.join(root, p)) for p in paths}


def _list_files(path: str) -> dict[str, int]:
  """The list file itself and every image it names that exists (a missing one is the list
  loader's error, or shows as gone)."""
  root = os.path.dirname(os.path.abspath(path))
  out = {os.path.basename(path): os.path.getsize(path)}
  with open(path, encoding='utf-8', errors='replace') as f:
    for line in f:
      parts = line.split('#')[0].split()
      if parts and os.path.isfile(os.path.join(root, parts[0])):
        out[parts[0]] = os.path.getsize(os.path.join(root, parts[0]))
  return out


def files_of(spec: str, labels: str | None = None) -> dict[str, int] | None:
  """{file name: size in bytes} of the files data set `spec` reads (names relative to the
  folder or as the list writes them), with the label table `labels` under the name
  '<labels>'; None for a source whose items are not files (digits, npz:, tfds:) or that does
  not exist (its loader says so)."""
  kind, _, rest = spec.partition(':')
  if kind in ('pairs', 'mosaic'):
    return files_of(rest, labels)
  try:
    if kind == 'folder' and os.path.isdir(rest):
      found = _folder_files(rest)
    elif kind == 'list' and os.path.isfile(rest):
      found = _list_files(rest)
    else:
      return None
    if labels is not None and os.path.isfile(labels):
      found['<labels>'] = os.path.getsize(labels)
  except OSError as e:
    raise DataError(f'data set {spec!r} cannot be listed ({e.strerror or e}: '
                    f'{e.filename})') from None
  return found


def record(workdir: str, spec: str, found: dict[str, int] | None) -> None:
  """Writes `WORKDIR/data.json` (nothing for a source without files); a full disk warns."""
  if found is not None:
    plumbing.write_json(os.path.join(workdir, DATA_FILE),
                        {'dataset': spec, 'num_files': len(found), 'files': found})


def recorded(workdir: str) -> dict[str, int] | None:
  """The files recorded by the run in `workdir`; None when it recorded none (or the record
  cannot be read: a damaged record checks nothing, with no false alarm)."""
  try:
    with open(os.path.join(workdir, DATA_FILE), encoding='utf-8') as f:
      files = json.load(f).get('files')
  except (OSError, ValueError, AttributeError):
    return None
  ok = isinstance(files, dict) and all(isinstance(v, int) for v in files.values())
  return files if ok else None


def _examples(names: list[str]) -> str:
  shown = ', '.join(repr(n) for n in sorted(names)[:EXAMPLES])
  return shown + (', ...' if len(names) > EXAMPLES else '')


def difference(before: dict[str, int], now: dict[str, int]) -> str | None:
  """What changed from `before` to `now`, in words ('2 files gone (...), 1 new (...)'), or
  None when they are the same."""
  gone = [n for n in before if n not in now]
  new = [n for n in now if n not in before]
  resized = [n for n in before if n in now and now[n] != before[n]]
  parts = [f'{len(names)} {what} ({_examples(names)})' for names, what in
           ((gone, 'gone'), (new, 'new'), (resized, 'of another size')) if names]
  if not parts:
    return None
  return f'{len(before)} files recorded, now: ' + '; '.join(parts)


def check(workdir: str, spec: str, doing: str, labels: str | None = None) -> None:
  """Raises a one-line DataError when data set `spec` (with label table `labels`) differs
  from what the run in `workdir` recorded; `doing` says what was about to happen ('resume',
  'be served', ...)."""
  before = recorded(workdir)
  found = None if before is None else files_of(spec, labels)
  if found is None:
    return
  changed = difference(before, found)
  if changed:
    raise DataError(f'{spec} changed since the run in {workdir} read it ({changed}); its '
                    f'items are numbered by these files, so it cannot {doing}: put the files '
                    'back as they were, or train a new run on the data as it is now')


def check_or_record(workdir: str, spec: str, *, resuming: bool, write: bool,
                    labels: str | None = None) -> None:
  """At the start of a run: a resumed run checks its data set against data.json (`check`), a
  fresh one records it (`record`; only where `write`, i.e. on process 0)."""
  if resuming:
    check(workdir, spec, 'resume', labels)
  elif write:
    record(workdir, spec, files_of(spec, labels))
