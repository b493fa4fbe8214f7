"""The retrieval engine: one distance pass per query chunk, shared by every metric, the search
and the service.

A query chunk's Hamming distances to the whole database are computed once, by one program
(`distances`: the database's valid row count is an argument, so every database size within a
padded length (`row_bucket`) shares it), and a second program reads them as often as the
tallies asked for need:

* `nearest`: the T nearest items of each query, ties by index (`selection`), with their
  distances and, for a relevance, their levels;
* `histogram`: items per (relevance level, distance), from which the host computes every tie
  order's AP, precision, recall, NDCG, ...;
* `ranking`: every item's distance and level (whole-database rankings with index ties);
* `relevant`: the relevant items of each query;
* `first_relevant`: how many items are closer than the nearest relevant one, tied with it, and
  tied with it before it in index order (the rank of a copy's original).

Relevance is a strategy (`relevance`); tallies are asked per strategy, and strategies and
tallies of several measures share one pass. `measure` runs a pass for several measures (each
turning a chunk's tallies into per-query values on the host); `scan` yields the chunks.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from hashjax.retrieval import codes as codes_lib
from hashjax.retrieval import ranking, selection
from hashjax.retrieval.relevance import Relevance, has_db_part, levels_of
from hashjax.runtime import parallel

ALIGN = 256  # database rows are padded to a multiple of this (word packing, uint8 block sums)


def row_bucket(num_rows: int) -> int:
  """The padded length for `num_rows` database rows: a multiple of ALIGN and of
  2**(⌊log2 N⌋ − 5), so at most 1/32 of the rows are padding and a growing database compiles
  O(log N) programs."""
  step = max(ALIGN, 1 << max(0, int(num_rows).bit_length() - 6))
  return max(step, -(-int(num_rows) // step) * step)


def pad_rows(array, rows: int, value=0) -> np.ndarray:
  """Pads axis 0 of a host array to `rows` rows with `value`."""
  array = np.asarray(array)
  pad = rows - len(array)
  if not pad:
    return array
  return np.concatenate([array, np.full((pad, *array.shape[1:]), value, array.dtype)])


def distance_dtype(bits: int):
  """uint8 while every distance and the padding sentinel (dtype max) fit, else uint16."""
  return jnp.uint8 if bits < 255 else jnp.uint16


def word_distances(query_QxU: jax.Array, db_NxU: jax.Array, num_valid, bits: int) -> jax.Array:
  """Hamming distances [Q, N] between uint32 word codes (`codes.code_words`), traceable.

  Rows of the database at or after `num_valid` (padding) get the dtype's max, a sentinel
  larger than any real distance. `num_valid` is a Python int or a traced int32 scalar.
  """
  dtype = distance_dtype(bits)
  dist_QxN = jnp.zeros((query_QxU.shape[0], db_NxU.shape[0]), dtype)
  for u in range(query_QxU.shape[1]):
    xor_QxN = jnp.bitwise_xor(query_QxU[:, u, None], db_NxU[None, :, u])
    dist_QxN = dist_QxN + jax.lax.population_count(xor_QxN).astype(dtype)
  if not isinstance(num_valid, (int, np.integer)) or num_valid < db_NxU.shape[0]:
    valid_N = jnp.arange(db_NxU.shape[0]) < num_valid
    dist_QxN = jnp.where(valid_N[None, :], dist_QxN, jnp.iinfo(dtype).max)
  return dist_QxN


def distances_and_sample(query_QxU: jax.Array, db_NxU: jax.Array, num_valid,
                         bits: int) -> tuple[jax.Array, jax.Array | None]:
  """`word_distances` [Q, N], and the distances to every `selection.SAMPLE_STRIDE`-th block of
  the database (None for a small database) that the top-k search guesses its threshold from.
  Computing the sample here, from the codes, keeps XLA from re-reading the whole distance
  array with a stride in every pass of the guess."""
  dist_QxN = word_distances(query_QxU, db_NxU, num_valid, bits)
  n = db_NxU.shape[0]
  if not selection.sample_blocks(n):
    return dist_QxN, None
  rows = np.arange(n).reshape(-1, selection.BLOCK)[::selection.SAMPLE_STRIDE].reshape(-1)
  sample_valid = jnp.sum(jnp.asarray(rows) < num_valid)  # the valid rows stay a prefix
  return dist_QxN, word_distances(query_QxU, db_NxU[rows], sample_valid, bits)


@dataclasses.dataclass(frozen=True)
class Database:
  """Database codes as uint32 words on the devices, padded to `row_bucket` rows: the database
  side of every pass. `num_items` are real; `bits` is 32 · words per code (the distance
  range the programs are built for)."""
  words_NxU: jax.Array
  num_items: int

  @classmethod
  def of(cls, codes, rows: int | None = None) -> Database:
    """From ±1 codes [N, K] or packed uint8 [N, P]; rows: the padded length (default
    `row_bucket(N)`)."""
    words = codes_lib.code_words(codes)
    padded = pad_rows(words, row_bucket(len(words)) if rows is None else rows)
    return cls(jax.device_put(padded), len(words))

  @property
  def bits(self) -> int:
    return 32 * self.words_NxU.shape[1]

  @property
  def rows(self) -> int:
    return self.words_NxU.shape[0]


# -- the chunk driver ------------------------------------------------------------------------
def query_chunk_size(num_rows: int, chunk_size: int | None = None) -> int:
  """Queries per step: a multiple of the device count, ~2**24 query·item pairs per device."""
  devices = jax.local_device_count()
  if chunk_size is None:
    per_device = int(np.clip(2**24 // max(num_rows, 1), 1, 256))
  else:
    per_device = max(1, -(-int(chunk_size) // devices))
  return per_device * devices


def few_queries_chunk(num_query: int, chunk: int) -> int:
  """For a handful of queries (a served search), a chunk of the next power of two per device
  rather than a full one: a few compiled shapes, little padding."""
  devices = jax.local_device_count()
  return min(chunk, devices * (1 << max(0, -(-num_query // devices) - 1).bit_length()))


def pad_chunk(array, chunk: int) -> np.ndarray:
  """Pads a query chunk to `chunk` rows by repeating its last row (one compiled shape)."""
  array = np.asarray(array)
  if len(array) == chunk:
    return array
  return np.concatenate([array, np.repeat(array[-1:], chunk - len(array), axis=0)])


def each_chunk(run: Callable[..., Any], query_arrays: tuple, chunk: int,
               ahead: int = 2) -> Iterator[tuple[int, int, Any]]:
  """Yields (start, stop, run(*padded chunk arrays)) for each chunk of the query arrays
  (equal-length [Q, ...]), with up to `ahead` later chunks already dispatched: the devices
  compute them while the host reads this one."""
  num_query = len(query_arrays[0])
  pending = collections.deque()
  for start in range(0, num_query, chunk):
    stop = min(start + chunk, num_query)
    pending.append((start, stop, run(*(pad_chunk(a[start:stop], chunk) for a in query_arrays))))
    if len(pending) > ahead:
      yield pending.popleft()
  yield from pending


# -- tallies ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Tallies:
  """What a pass computes for one relevance (see the module docstring); `nearest` is T."""
  nearest: int = 0
  histogram: bool = False
  ranking: bool = False
  relevant: bool = False
  first_relevant: bool = False

  def __or__(self, other: Tallies) -> Tallies:
    return Tallies(max(self.nearest, other.nearest), self.histogram or other.histogram,
                   self.ranking or other.ranking, self.relevant or other.relevant,
                   self.first_relevant or other.first_relevant)


def _key_dtype(bits: int, max_level: int):
  return jnp.uint16 if (bits + 2) * (max_level + 1) <= 2**16 else jnp.int32


def _first_relevant(dist_QxN, relevant_QxN):
  """(closer, tied, tied before) int32 [Q] of each row's nearest relevant item (the first in
  index order among those at its distance)."""
  n = dist_QxN.shape[1]
  index_N = jnp.arange(n, dtype=jnp.int32)
  at_Q = jnp.min(jnp.where(relevant_QxN, dist_QxN, jnp.iinfo(dist_QxN.dtype).max), axis=1)
  tied_QxN = dist_QxN == at_Q[:, None]
  first_Q = jnp.min(jnp.where(tied_QxN & relevant_QxN, index_N[None, :], n), axis=1)
  return (selection.count_true(dist_QxN < at_Q[:, None]), selection.count_true(tied_QxN),
          selection.count_true(tied_QxN & (index_N[None, :] < first_Q[:, None])))


def _stats_fn(bits: int, nearest: int, asks: tuple[tuple[tuple, Tallies], ...]):
  """The second program's body: (dist, sample, query parts..., num_valid, db parts...) →
  {name: [Q, ...]} (see `Chunk` for the names)."""
  with_db = [has_db_part(key) for key, _ in asks]

  def stats(dist_QxN, sample_QxS, *args):
    query_parts, num_valid = args[:len(asks)], args[len(asks)]
    db_parts = iter(args[len(asks) + 1:])
    valid_N = jnp.arange(dist_QxN.shape[1]) < num_valid
    out = {}
    if nearest:
      index_QxT = selection.nearest_in_index_order(dist_QxN, nearest, bits, sample_QxS)
      out['nearest_index'] = index_QxT
      out['nearest_dist'] = jnp.take_along_axis(dist_QxN, index_QxT, axis=1)
    # Padding rows (the sentinel distance) fall in the bin bits + 1, which the host drops.
    clipped_QxN = jnp.minimum(dist_QxN, bits + 1)
    if any(t.ranking for _, t in asks):
      out['dist'] = clipped_QxN
    for r, ((key, tallies), query_part) in enumerate(zip(asks, query_parts)):
      level_QxN = levels_of(key, query_part, next(db_parts) if with_db[r] else None, valid_N)
      if tallies.nearest:
        out[f'nearest_level{r}'] = jnp.take_along_axis(level_QxN, out['nearest_index'], axis=1)
      if tallies.histogram:
        dtype = _key_dtype(bits, key[1])
        out[f'key{r}'] = clipped_QxN.astype(dtype) + (bits + 2) * level_QxN.astype(dtype)
      if tallies.ranking:
        out[f'level{r}'] = level_QxN
      if tallies.relevant:
        out[f'relevant{r}'] = selection.count_true(level_QxN > 0)
      if tallies.first_relevant:
        out[f'closer{r}'], out[f'tied{r}'], out[f'before{r}'] = _first_relevant(
            dist_QxN, level_QxN > 0)
    return out

  return stats


@functools.lru_cache(maxsize=None)
def distance_program(bits: int):
  """The one distance program of `bits`-bit words: (query words [Q, U], db words [N, U],
  num_valid) → (`distances_and_sample`), query arguments split over the local devices,
  database ones replicated. Every pass of every tally set uses it."""
  return parallel.local_query_jit(
      lambda query_QxU, db_NxU, num_valid: distances_and_sample(query_QxU, db_NxU, num_valid,
                                                                bits), 1, 2)


@functools.lru_cache(maxsize=None)
def program(bits: int, nearest: int, asks: tuple[tuple[tuple, Tallies], ...]):
  """Chunk function (query words, query parts..., db words, num_valid, db parts...) → the
  tallies {name: [Q, ...]}, as two jitted programs: `distance_program` writes the distances
  and their sample, the second reads them in every pass (in one program XLA fuses their
  computation into each pass and computes them again there)."""
  distances = distance_program(bits)
  num_db_parts = sum(has_db_part(key) for key, _ in asks)
  stats = parallel.local_query_jit(_stats_fn(bits, nearest, asks), 2 + len(asks),
                                   1 + num_db_parts)

  def run(query_QxU, query_parts, db_NxU, num_valid, db_parts):
    return stats(*distances(query_QxU, db_NxU, num_valid), *query_parts, num_valid, *db_parts)

  run.distances, run.stats = distances, stats  # the compiled programs, for inspection
  return run


class Chunk:
  """One query chunk's tallies on the host (queries `start`..`stop`−1), and what the host
  derives from them, each computed once: the nearest items in (distance, index) order, items
  per (level, distance), whole rankings."""

  def __init__(self, start: int, stop: int, out: dict[str, np.ndarray], bits: int,
               num_items: int, max_levels: tuple[int, ...]):
    self.start, self.stop, self.bits, self.num_items = start, stop, bits, num_items
    self._out = {k: np.asarray(v)[:stop - start] for k, v in out.items()}
    self._max_levels = max_levels
    self._cache: dict[Any, Any] = {}

  def __len__(self) -> int:
    return self.stop - self.start

  def _cached(self, key, make):
    if key not in self._cache:
      self._cache[key] = make()
    return self._cache[key]

  def _order(self) -> np.ndarray:
    return self._cached('order', lambda: ranking.order_by_distance(self._out['nearest_dist']))

  def nearest(self) -> tuple[np.ndarray, np.ndarray]:
    """(distances [q, T], indices [q, T]) of the T nearest items, by (distance, index)."""
    order = self._order()
    return (np.take_along_axis(self._out['nearest_dist'], order, axis=1),
            np.take_along_axis(self._out['nearest_index'], order, axis=1))

  def nearest_levels(self, r: int) -> np.ndarray:
    """Levels [q, T] of the T nearest items of relevance r, by (distance, index)."""
    return self._cached(('nearest', r), lambda: np.take_along_axis(
        self._out[f'nearest_level{r}'], self._order(), axis=1))

  def counts(self, r: int) -> np.ndarray:
    """Items per (level, distance) of relevance r, int64 [q, max_level + 1, bits + 1]."""
    return self._cached(('counts', r), lambda: ranking.level_counts(
        self._out.pop(f'key{r}'), self.bits, self._max_levels[r] + 1))

  def ranking(self, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(distance [q, N], level [q, N]) of every item for relevance r (N real items)."""
    return self._out['dist'][:, :self.num_items], self._out[f'level{r}'][:, :self.num_items]

  def relevant(self, r: int) -> np.ndarray:
    """Relevant items per query of relevance r, int64 [q]."""
    if f'relevant{r}' in self._out:
      return self._out[f'relevant{r}'].astype(np.int64)
    return self.counts(r)[:, 1:].sum(axis=(1, 2))

  def first_relevant(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(closer, tied, tied before) int64 [q] of each query's nearest relevant item."""
    return tuple(self._out[f'{name}{r}'].astype(np.int64) for name in ('closer', 'tied',
                                                                       'before'))


def scan(query_codes, database: Database, asks: list[tuple[Relevance | None, Tallies]], *,
         chunk_size: int | None = None, few_queries: bool = False) -> Iterator[Chunk]:
  """One pass over the query chunks: yields a `Chunk` per chunk with the tallies `asks`
  requested, each relevance's levels computed once (tallies of one relevance object are
  merged; a None relevance asks only for `nearest`).

  Args:
    query_codes: ±1 [Q, K] or packed uint8 [Q, P], of the database's code length.
    database: `Database.of(db_codes)`.
    asks: (relevance, tallies) pairs; `Chunk` methods take the relevance's position among
      the distinct relevances, in order of first appearance (`relevance_index`).
    chunk_size: queries at once (default: ~2**24 query·item pairs per device).
    few_queries: a chunk of the next power of two only (`few_queries_chunk`).
  """
  query_QxU = codes_lib.code_words(query_codes)
  merged: dict[int, tuple[Relevance, Tallies]] = {}
  nearest = 0
  for relevance, tallies in asks:
    nearest = max(nearest, tallies.nearest)
    if relevance is not None:
      old = merged.get(id(relevance), (relevance, Tallies()))[1]
      merged[id(relevance)] = (relevance, old | tallies)
  relevances = [r for r, _ in merged.values()]
  key = tuple((r.key, t) for r, t in merged.values())
  run = program(database.bits, nearest, key)
  db_parts = tuple(jax.device_put(p) for p in (r.db_part(database.rows) for r in relevances)
                   if p is not None)
  num_valid = np.int32(database.num_items)
  chunk = query_chunk_size(database.rows, chunk_size)
  if few_queries and chunk_size is None:
    chunk = few_queries_chunk(len(query_QxU), chunk)
  max_levels = tuple(r.max_level for r in relevances)
  step = lambda q, *parts: run(q, parts, database.words_NxU, num_valid, db_parts)
  for start, stop, out in each_chunk(step, (query_QxU, *(r.query_part() for r in relevances)),
                                     chunk):
    yield Chunk(start, stop, out, database.bits, database.num_items, max_levels)


def relevance_index(asks: list[tuple[Relevance | None, Tallies]]) -> dict[int, int]:
  """id(relevance) → its position in the chunks of `scan(..., asks)`."""
  order: dict[int, int] = {}
  for relevance, _ in asks:
    if relevance is not None and id(relevance) not in order:
      order[id(relevance)] = len(order)
  return order


class Measure(Protocol):
  """What `measure` runs: a relevance, the tallies it needs for a database of N items, and
  its per-query values of a chunk (r: the relevance's position in the chunk)."""
  relevance: Relevance

  def tallies(self, num_items: int) -> Tallies: ...

  def values(self, chunk: Chunk, r: int) -> dict[str, np.ndarray]: ...


def measure(query_codes, database: Database, measures: dict[str, Measure], *,
            chunk_size: int | None = None) -> dict[str, dict[str, np.ndarray]]:
  """Every measure over one pass: {name: {value name: per-query array [Q, ...]}}."""
  asks = [(m.relevance, m.tallies(database.num_items)) for m in measures.values()]
  where = relevance_index(asks)
  parts: dict[str, dict[str, list]] = {name: {} for name in measures}
  for chunk in scan(query_codes, database, asks, chunk_size=chunk_size):
    for name, m in measures.items():
      for key, value in m.values(chunk, where[id(m.relevance)]).items():
        parts[name].setdefault(key, []).append(value)
  return {name: {key: np.concatenate(v) for key, v in values.items()}
          for name, values in parts.items()}
