"""Label tables: a CSV naming the categorical attributes of the images of a `folder:` source.

The first line is a header. Its first column is `file` (the image's path relative to the
folder, e.g. `faces/12.jpg`) or `id` (the file name without its extension: `12` names
`12.jpg`, `12.png`, ... anywhere under the folder). The other columns give the attributes,
either by value name or one-hot:

    file,hair,eye                     id,hair=blue,hair=red,eye=red,eye=green
    12.jpg,blue,red                   12,1,0,1,0

One-hot columns are named `attribute=value`; each row has exactly one 1 per attribute.
Both kinds may be mixed. A value left empty (`12.jpg,blue,`) means the attribute is not
known for that image. Blank lines are skipped.

Attribute values are numbered in the order of their one-hot columns, or sorted by name for
attributes given by name. `LabelTable.attribute_ids(keys)` gives int32 [N, A] with −1 where
an image has no row or the attribute is unknown; `multi_hot` the matching [N, ΣV] 0/1 labels.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os

import numpy as np

from hashjax.runtime.errors import DataError

KEY_COLUMNS = ('file', 'id')


@dataclasses.dataclass(frozen=True)
class LabelTable:
  """A parsed label table.

  Attributes:
    key: 'file' or 'id', how rows name images. names: the attribute names (A of them).
    values: each attribute's value names, in id order. rows: key → int32 [A] value ids (−1:
      unknown). path: the CSV file.
  """
  key: str
  names: tuple[str, ...]
  values: tuple[tuple[str, ...], ...]
  rows: dict[str, np.ndarray]
  path: str

  def image_key(self, relative_path: str) -> str:
    """The key of an image file (a path relative to the folder) in this table."""
    if self.key == 'file':
      return relative_path.replace(os.sep, '/')
    return os.path.splitext(os.path.basename(relative_path))[0]

  def attribute_ids(self, relative_paths: list[str]) -> np.ndarray:
    """int32 [N, A] value ids of the images (−1: no row, or the attribute is unknown)."""
    unknown = np.full(len(self.names), -1, np.int32)
    return np.stack([self.rows.get(self.image_key(p), unknown) for p in relative_paths]
                    ) if relative_paths else np.zeros((0, len(self.names)), np.int32)


def multi_hot(ids_NxA: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
  """int64 [N, ΣV] 0/1: the one-hot of each known attribute value, side by side."""
  ids = np.asarray(ids_NxA)
  out = np.zeros((len(ids), int(sum(sizes))), np.int64)
  start = 0
  for a, size in enumerate(sizes):
    known = ids[:, a] >= 0
    out[np.flatnonzero(known), start + ids[known, a]] = 1
    start += size
  return out


def _columns(header: list[str], path: str) -> tuple[str, list[tuple[str, str | None]]]:
  """(key column, [(attribute, value or None for a by-name column)]) from the header."""
  header = [h.strip() for h in header]
  if not header or header[0] not in KEY_COLUMNS or len(header) < 2:
    raise DataError(f'label table {path}: the header must start with file or id and name at '
                    f'least one attribute (e.g. "file,hair,eye"); got {",".join(header)[:80]!r}')
  columns = []
  for name in header[1:]:
    attribute, eq, value = name.partition('=')
    if not attribute or (eq and not value):
      raise DataError(f'label table {path}: column {name!r} is neither an attribute name nor '
                      'attribute=value')
    columns.append((attribute, value if eq else None))
  if len(set(columns)) < len(columns):
    raise DataError(f'label table {path}: a column is named twice')
  by_name = {a for a, v in columns if v is None}
  if by_name & {a for a, v in columns if v is not None}:
    raise DataError(f'label table {path}: attribute {sorted(by_name)[0]!r} is given both by '
                    'name and one-hot')
  return header[0], columns


def _parse_row(fields: list[str], columns, names: list[str], where: str) -> dict[str, str]:
  """{attribute: value name} of one row (unknown attributes left out)."""
  if len(fields) != len(columns):
    raise ValueError(f'{where}: {len(fields)} values for {len(columns)} attribute columns')
  chosen: dict[str, list[str]] = {n: [] for n in names}
  for (attribute, value), field in zip(columns, fields):
    field = field.strip()
    if value is None:
      if field:
        chosen[attribute].append(field)
    elif field == '1':
      chosen[attribute].append(value)
    elif field not in ('0', ''):
      raise ValueError(f'{where}: one-hot column {attribute}={value} holds {field!r}; '
                       'accepted: 0 or 1')
  for attribute in names:
    if len(chosen[attribute]) > 1:
      raise ValueError(f'{where}: {len(chosen[attribute])} values of {attribute} '
                       f'({", ".join(chosen[attribute])}); each row has at most one')
  return {a: v[0] for a, v in chosen.items() if v}


def _nonblank_rows(path: str) -> list[tuple[int, list[str]]]:
  """[(row number, fields)] of the CSV's rows that are not blank. UTF-8, with or without a
  byte-order mark; other bytes, or a field over the csv module's limit, are a DataError."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line = data.count(b'\n', 0, e.start) + 1
    raise DataError(f'label table {path}:{line}: byte {e.start} ({data[e.start:e.start + 1]!r}) '
                    'is not UTF-8; save the table as UTF-8 text') from None
  reader = csv.reader(io.StringIO(text, newline=''))
  try:
    return [(n, row) for n, row in enumerate(reader, 1) if any(c.strip() for c in row)]
  except csv.Error as e:
    raise DataError(f'label table {path}:{reader.line_num}: {e}') from None


def read_label_table(path: str) -> LabelTable:
  """Parses a label table (see the module docstring).

  Raises:
    DataError (one line): a missing or empty file, a bad header, malformed rows (the first
    is named, with the count), or a key named twice.
  """
  if not os.path.isfile(path):
    raise DataError(f'label table {path!r} does not exist')
  lines = _nonblank_rows(path)
  if not lines:
    raise DataError(f'label table {path!r} is empty')
  key, columns = _columns(lines[0][1], path)
  names = list(dict.fromkeys(a for a, _ in columns))
  parsed, bad, seen = {}, [], {}
  for n, row in lines[1:]:
    item = row[0].strip()
    try:
      if not item:
        raise ValueError(f'{path}:{n}: no {key} in the first column')
      if item in seen:
        raise ValueError(f'{path}:{n}: {key} {item!r} is also on line {seen[item]}')
      seen[item] = n
      parsed[item] = _parse_row(row[1:], columns, names, f'{path}:{n}')
    except ValueError as e:
      bad.append(str(e))
  if bad:
    more = f' ({len(bad)} malformed rows in all)' if len(bad) > 1 else ''
    raise DataError(f'{bad[0]}{more}')
  values = []
  for name in names:
    one_hot = [v for a, v in columns if a == name and v is not None]
    values.append(tuple(one_hot) if one_hot else
                  tuple(sorted({r[name] for r in parsed.values() if name in r})))
  index = [{v: i for i, v in enumerate(vs)} for vs in values]
  rows = {item: np.array([index[a].get(r.get(name), -1) for a, name in enumerate(names)],
                         np.int32) for item, r in parsed.items()}
  return LabelTable(key, tuple(names), tuple(values), rows, path)
