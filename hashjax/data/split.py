"""The retrieval protocol: queries drawn first, the rest is the database, and the training
set drawn from the database."""

from __future__ import annotations

import dataclasses

import numpy as np

from hashjax.runtime.errors import DataError


@dataclasses.dataclass(frozen=True)
class Split:
  """Indices into a source: query and database are disjoint; train ⊆ database by default."""
  query: np.ndarray
  database: np.ndarray
  train: np.ndarray


def _pick(rng, pool: np.ndarray, labels: np.ndarray, per_class: int | None,
          total: int | None, what: str) -> np.ndarray:
  if (per_class is None) == (total is None):
    raise DataError(f'set exactly one of {what}_per_class and num_{what} '
                    f'(got {per_class!r} and {total!r})')
  if total is not None:
    if not 0 < total <= len(pool):
      raise DataError(f'num_{what}={total} is impossible with {len(pool)} items available; '
                      f'accepted: 1..{len(pool)}')
    return np.sort(rng.choice(pool, size=total, replace=False))
  if labels.ndim != 1:
    raise DataError(f'{what}_per_class needs single-label data; multi-hot labels need num_{what}')
  if per_class < 1:
    raise DataError(f'{what}_per_class={per_class} must be ≥ 1')
  chosen = []
  for c in np.unique(labels[pool]):
    members = pool[labels[pool] == c]
    if len(members) < per_class:
      raise DataError(f'{what}_per_class={per_class} is impossible: class {c} has only '
                      f'{len(members)} items available; accepted: 1..{len(members)}')
    chosen.append(rng.choice(members, size=per_class, replace=False))
  return np.sort(np.concatenate(chosen))


def protocol_split(labels: np.ndarray, *, seed: int, query_per_class: int | None = None,
                   num_query: int | None = None, train_per_class: int | None = None,
                   num_train: int | None = None, train_in_database: bool = True) -> Split:
  """The retrieval protocol: queries drawn first, the rest is the database, and the training
  set drawn from the database (the usual CIFAR-10 / ImageNet-100 / MNIST protocols).

  Set one of query_per_class / num_query and one of train_per_class / num_train.
  With train_in_database=False the training images leave the database.

  Returns:
    `Split` of sorted int64 index arrays. Deterministic in `seed`.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng([seed, 0x5117])
  everything = np.arange(len(labels))
  query = _pick(rng, everything, labels, query_per_class, num_query, 'query')
  database = np.setdiff1d(everything, query)
  if len(database) < 2:
    raise DataError(f'the query set leaves {len(database)} database items; need at least 2')
  train = _pick(rng, database, labels, train_per_class, num_train, 'train')
  if not train_in_database:
    database = np.setdiff1d(database, train)
    if len(database) == 0:
      raise DataError('train_in_database=False leaves an empty database')
  return Split(query=query, database=database, train=train)
