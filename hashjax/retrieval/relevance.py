"""What makes a database item relevant to a query: a small strategy the retrieval engine
calls inside its device program (`engine`), so that every metric, whatever its ground truth,
reads the same distances.

A strategy gives each (query, item) pair a *level*: 0 for irrelevant, 1..`max_level` for
relevant (a grade). Its arrays come in two parts: `query_part` travels with the query chunks,
`db_part` (or None) stays on the devices beside the database codes.

* `Labels`: class ids [N] (relevant: the same class) or multi-hot [N, L] (relevant: at least
  one shared label), level 1;
* `Labels(graded=True)`: the number of shared labels (multi-hot), or 1 / 0 for class ids;
* `IndexSets`: each query's relevant items listed as database indices [Q, R] (−1 pads a
  shorter list), e.g. its nearest neighbours in pixel space or, with R = 1, the original of a
  copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


class Relevance:
  """The interface the engine uses (see the module docstring)."""
  max_level: int

  def query_part(self) -> np.ndarray:
    """[Q, ...]: split into query chunks with the codes."""
    raise NotImplementedError

  def db_part(self, rows: int) -> np.ndarray | None:
    """[rows, ...]: the database side, padded to `rows` (None: the strategy has none)."""
    raise NotImplementedError

  @property
  def key(self) -> tuple:
    """What the engine compiles its program for, static: (kind, max_level, a detail of the
    kind); `levels_of` and `has_db_part` read it."""
    raise NotImplementedError


class Labels(Relevance):
  """Relevance by shared labels: class ids [Q], [N] or multi-hot [Q, L], [N, L]."""

  def __init__(self, query_labels, db_labels, *, graded: bool = False):
    self.query_labels, self.db_labels = np.asarray(query_labels), np.asarray(db_labels)
    self.graded = graded
    multi_hot = self.db_labels.ndim == 2
    self.max_level = self.db_labels.shape[1] if graded and multi_hot else 1

  def query_part(self) -> np.ndarray:
    return self.query_labels

  def db_part(self, rows: int) -> np.ndarray:
    pad = rows - len(self.db_labels)
    fill = np.full((pad, *self.db_labels.shape[1:]), 0 if self.db_labels.ndim == 2 else -1,
                   self.db_labels.dtype)
    return np.concatenate([self.db_labels, fill]) if pad else self.db_labels

  @property
  def key(self) -> tuple:
    return ('grades' if self.graded else 'labels', self.max_level, self.db_labels.ndim)


def _same_class(query_Q, db_N, valid_N):
  return ((query_Q[:, None] == db_N[None, :]) & valid_N[None, :]).astype(jnp.uint8)


def _shared_any(query_QxL, db_NxL, valid_N):
  inner_QxN = query_QxL.astype(jnp.float32) @ db_NxL.astype(jnp.float32).T
  return ((inner_QxN > 0) & valid_N[None, :]).astype(jnp.uint8)


def _shared_count(query_QxL, db_NxL, valid_N):
  inner_QxN = query_QxL.astype(jnp.float32) @ db_NxL.astype(jnp.float32).T
  return jnp.where(valid_N[None, :], jnp.round(inner_QxN), 0).astype(jnp.int32)


class IndexSets(Relevance):
  """Each query's relevant database items as indices, int [Q, R]; −1 lists nothing."""
  max_level = 1

  def __init__(self, sets_QxR):
    self.sets_QxR = np.asarray(sets_QxR, np.int32)

  def query_part(self) -> np.ndarray:
    return self.sets_QxR

  def db_part(self, rows: int) -> None:
    return None

  @property
  def key(self) -> tuple:
    return ('sets', self.max_level, self.sets_QxR.shape[1] == 1)


def _listed(sets_QxR, valid_N):
  """uint8 [Q, N]: 1 at each query's listed indices (a comparison for one index per query, a
  scatter otherwise)."""
  n = valid_N.shape[0]
  if sets_QxR.shape[1] == 1:
    listed_QxN = jnp.arange(n, dtype=jnp.int32)[None, :] == sets_QxR
    return (listed_QxN & valid_N[None, :]).astype(jnp.uint8)
  rows_QxR = jnp.broadcast_to(jnp.arange(sets_QxR.shape[0])[:, None], sets_QxR.shape)
  cols_QxR = jnp.where(sets_QxR < 0, n, sets_QxR)  # out of range: dropped
  mask = jnp.zeros((sets_QxR.shape[0], n), jnp.uint8).at[rows_QxR, cols_QxR].set(
      1, mode='drop')
  return mask * valid_N[None, :].astype(jnp.uint8)


def has_db_part(key: tuple) -> bool:
  """Whether the strategy of `key` has a database side (`Relevance.db_part`)."""
  return key[0] != 'sets'


def levels_of(key: tuple, query_part, db_part, valid_N: jax.Array) -> jax.Array:
  """Traceable: the levels [Q, N] (uint8, or int32 for grades) of the strategy whose `key` is
  given, 0 on padding rows (valid_N False)."""
  kind = key[0]
  if kind == 'sets':
    return _listed(query_part, valid_N)
  multi_hot = key[2] == 2
  if kind == 'grades':
    return _shared_count(query_part, db_part, valid_N) if multi_hot else _same_class(
        query_part, db_part, valid_N).astype(jnp.int32)
  return (_shared_any if multi_hot else _same_class)(query_part, db_part, valid_N)
