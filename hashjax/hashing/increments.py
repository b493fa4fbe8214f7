"""Incremental protocols: which items of a split arrive later, and what each stage sees.

Two protocols (docs/UPDATE.md), on top of `data.protocol_split`:
  class-incremental   the classes in `new_classes` arrive later (all their items);
  sample-incremental  a fraction `later_fraction` of each class's training items, and the same
                      fraction of its other database items, arrive later (drawn from the seed).
Queries never arrive: they are what users ask at any time.

Stages:
  'old'  before the update: training and database items that arrived first; queries of the
         old classes (all queries when every class is old);
  'new'  the update: the training items that arrived later (plus `replay_per_class` old
         training items of every old class), the whole database and every query;
  'all'  everything (retraining from scratch).

With `validation=True` the protocol's test queries leave the data before anything else is
drawn, and the split is drawn again from what is left: its queries are then a validation set
carved out of the database, for choosing settings without ever seeing a test query.
"""

from __future__ import annotations

import numpy as np

from hashjax.data import split as data_lib
from hashjax.data.split import Split
from hashjax.runtime.errors import DataError


def parse_classes(text: str | None) -> np.ndarray:
  """'7,8,9' → int64 [3]; None or '' → empty. A bad entry is a one-line `DataError`."""
  if not text:
    return np.zeros((0,), np.int64)
  try:
    return np.array(sorted({int(part) for part in str(text).split(',') if part.strip()}),
                    np.int64)
  except ValueError:
    raise DataError(f'split.new_classes={text!r} must be comma-separated class ids, '
                    'e.g. 7,8,9') from None


def _later_by_class(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray,
                    fraction: float) -> np.ndarray:
  """The items (sorted) of each class that arrive later: round(fraction × count) of them."""
  later = []
  for c in np.unique(labels[items]):
    members = items[labels[items] == c]
    later.append(rng.permutation(members)[:int(round(fraction * len(members)))])
  return np.sort(np.concatenate(later)) if later else np.zeros((0,), np.int64)


def arrives_later(labels: np.ndarray, split: Split, *, new_classes: np.ndarray,
                  later_fraction: float, seed: int) -> np.ndarray:
  """bool [N] over the source: the training and database items that arrive later."""
  labels = np.asarray(labels)
  later = np.zeros(len(labels), bool)
  if len(new_classes):
    if labels.ndim != 1:
      raise DataError('split.new_classes needs single-label data (class ids)')
    known = np.unique(labels)
    unknown = np.setdiff1d(new_classes, known)
    if len(unknown):
      raise DataError(f'split.new_classes has class {unknown[0]}, which the data lacks; '
                      f'accepted: {", ".join(map(str, known))}')
    if len(new_classes) == len(known):
      raise DataError('split.new_classes names every class; leave at least one old class')
    later[np.isin(labels, new_classes)] = True
  elif later_fraction > 0:
    if labels.ndim != 1:
      raise DataError('split.later_fraction needs single-label data (class ids)')
    rng = np.random.default_rng([seed, 0x1A7E])
    later[_later_by_class(rng, split.train, labels, later_fraction)] = True
    rest = np.setdiff1d(split.database, split.train)
    later[_later_by_class(rng, rest, labels, later_fraction)] = True
  later[split.query] = False
  return later


def stage_split(labels: np.ndarray, split: Split, later: np.ndarray, stage: str, *,
                replay_per_class: int = 0, seed: int = 0) -> Split:
  """The part of `split` that stage 'old', 'new' or 'all' sees (module docstring)."""
  labels = np.asarray(labels)
  if stage == 'all':
    return split
  if stage == 'old':
    old_classes = np.unique(labels[split.train[~later[split.train]]])
    query = split.query if labels.ndim != 1 else split.query[
        np.isin(labels[split.query], old_classes)]
    return Split(query=query, database=split.database[~later[split.database]],
                 train=split.train[~later[split.train]])
  if stage != 'new':
    raise DataError(f"split.stage={stage!r}; accepted: all, old, new")
  train = split.train[later[split.train]]
  if replay_per_class:
    rng = np.random.default_rng([seed, 0x4E9A])
    old = split.train[~later[split.train]]
    replay = [rng.permutation(old[labels[old] == c])[:replay_per_class]
              for c in np.unique(labels[old])]
    train = np.sort(np.concatenate([train, *replay]))
  if len(train) == 0:
    raise DataError("split.stage='new' has no training items: nothing arrives later")
  return Split(query=split.query, database=split.database, train=train)


def incremental_split(labels: np.ndarray, s, seed: int, *, replay_per_class: int = 0
                      ) -> tuple[Split, Split, np.ndarray]:
  """(the full split, the stage's split, arrives-later mask bool [N]) for a `SplitConfig`."""
  labels = np.asarray(labels)
  keep = np.arange(len(labels))
  kw = dict(query_per_class=s.query_per_class, num_query=s.num_query,
            train_per_class=s.train_per_class, num_train=s.num_train,
            train_in_database=s.train_in_database)
  full = data_lib.protocol_split(labels, seed=seed, **kw)
  if s.validation:  # drop the test queries; draw queries, database and train from the rest
    keep = full.database if s.train_in_database else np.union1d(full.database, full.train)
    inner = data_lib.protocol_split(labels[keep], seed=seed + 7919, **kw)
    full = Split(query=keep[inner.query], database=keep[inner.database],
                 train=keep[inner.train])
  later = arrives_later(labels, full, new_classes=parse_classes(s.new_classes),
                        later_fraction=s.later_fraction, seed=seed)
  return full, stage_split(labels, full, later, s.stage, replay_per_class=replay_per_class,
                           seed=seed), later
