"""What a checkpoint restore checks before it reads any array: the files' checksums and the
stored shapes. A failed check is a `ValueError` (one line), which the loop treats as a damaged
checkpoint: set aside, the one before resumed.

Checksums: orbax keeps none of the array data, so a flipped bit in a checkpoint's files would
be restored silently (an optimizer moment a little off). Once a save has completed, the SHA-256 of every file of its step folder is written to
`<step>/checksums.json`; a restore checks them first, and a file that is missing or differs
is a damaged checkpoint (`ValueError`), which the loop sets aside like any other and resumes
from the one before. A checkpoint without the file (saved by an earlier version, or a crash
between the save and its record) is restored unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax

from hashjax.runtime import disk

FILE = 'checksums.json'


def digests(step_dir: str) -> dict[str, str]:
  """{path relative to step_dir: SHA-256 hex} of every file under it but `FILE`."""
  out = {}
  for folder, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(folder, name)
      relative = os.path.relpath(path, step_dir)
      if relative.startswith(FILE):  # the record, or what is left of one being written
        continue
      digest = hashlib.sha256()
      with open(path, 'rb') as f:
        for chunk in iter(lambda f=f: f.read(1 << 20), b''):
          digest.update(chunk)
      out[relative] = digest.hexdigest()
  return out


def record(step_dir: str) -> bool:
  """Writes step_dir/checksums.json; False when the disk is full (with a warning: the
  checkpoint stays, unchecked) or the step is gone (deleted or set aside meanwhile)."""
  recorded = digests(step_dir)

  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(recorded, f, sort_keys=True)
  try:
    return disk.write_or_warn(os.path.join(step_dir, FILE), write)
  except FileNotFoundError:
    return False


def verify(step_dir: str) -> None:
  """Raises ValueError (one line) when a file recorded in step_dir/checksums.json is missing
  or differs; returns silently when there is no record."""
  path = os.path.join(step_dir, FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    recorded = json.load(f)  # a damaged record: json's ValueError, a damaged checkpoint too
  now = digests(step_dir)
  for relative, digest in sorted(recorded.items()):
    if relative not in now:
      raise ValueError(f'{step_dir}: {relative} is missing')
    if now[relative] != digest:
      raise ValueError(f'{step_dir}: {relative} is not what was saved (its checksum differs)')


def _key_name(key: Any) -> str:
  return str(getattr(key, 'name', getattr(key, 'key', getattr(key, 'idx', key))))


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/Dense_0/kernel': shape} of a tree's arrays (attribute, key or index paths)."""
  return {'/'.join(map(_key_name, path)): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, 'shape')}


def check_shapes(step: int, metadata: Any, abstract: Any) -> None:
  """Raises ValueError naming the first array whose stored shape (orbax's item metadata of
  checkpoint `step`) differs from the one `abstract` wants. Without metadata (None), or for
  an array the checkpoint lacks, nothing is raised here: orbax's restore says it."""
  tree = getattr(metadata, 'tree', metadata)  # orbax's TreeMetadata, or a plain tree
  stored = _shapes(tree) if tree is not None else {}
  for path, shape in _shapes(abstract).items():
    if stored.get(path, shape) != shape:
      raise ValueError(f'checkpoint {step} stores {path} with shape {stored[path]}; the '
                       f'model wants {shape}')
