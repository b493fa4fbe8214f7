"""Exact Hamming k-nearest-neighbour search by multi-index hashing (Norouzi, Punjani and Fleet,
CVPR 2012), on the host (numpy).

Each K-bit code is cut into m contiguous substrings; substring j of every database item is a
key of table j (the items sorted by key, with the offset of every key's run). If an item is
within Hamming distance d of the query, some substring is within ⌊d/m⌋ of the query's (the
pigeonhole principle: the m substring distances add up to d). So probing, for r = 0, 1, 2, ...,
every key at distance r from each query substring has found every item within distance
m(r+1) − 1; once k found items lie within that bound they are the exact k nearest, ties by
database index (every item at those distances has been seen).

m follows the paper: m ≈ K / log2(N), substrings of about log2 N bits, so a bucket holds about
one item of uniform codes. Where the codes are so crowded or spread out that a query's work
(keys probed + candidates checked) passes `max_work` × N, the query goes to the linear scan
(`fallback`) instead; when most of the first queries of a batch do, the rest skip the probing.
The results are the same either way.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Callable

import numpy as np

_POPCOUNT = np.array([bin(i).count('1') for i in range(256)], np.uint8)
MAX_KEY_BITS = 24  # direct-address tables: at most 2**24 + 1 offsets each


def choose_substrings(num_items: int, bits: int) -> int:
  """m ≈ bits / log2(N) (rounded), with substrings of at most MAX_KEY_BITS bits; 1 ≤ m ≤ bits."""
  m = round(bits / math.log2(max(num_items, 2)))
  return int(np.clip(max(m, math.ceil(bits / MAX_KEY_BITS)), 1, bits))


def substring_bounds(bits: int, m: int) -> list[tuple[int, int]]:
  """[start, stop) bit ranges of m contiguous substrings whose lengths differ by at most 1."""
  edges = [round(j * bits / m) for j in range(m + 1)]
  return list(zip(edges[:-1], edges[1:]))


def substring_keys(packed_NxP: np.ndarray, start: int, stop: int) -> np.ndarray:
  """Bits [start, stop) of packed codes (MSB first) as integer keys, int64 [N]."""
  first, last = start // 8, (stop - 1) // 8
  acc = np.zeros(len(packed_NxP), np.int64)
  for byte in range(first, last + 1):
    acc = (acc << 8) | packed_NxP[:, byte]
  return (acc >> (8 * (last + 1) - stop)) & ((1 << (stop - start)) - 1)


@functools.lru_cache(maxsize=None)
def flip_masks(length: int, radius: int) -> np.ndarray:
  """Every `length`-bit integer with exactly `radius` bits set, int64 [C(length, radius)]."""
  masks = [sum(1 << i for i in ones) for ones in itertools.combinations(range(length), radius)]
  return np.asarray(masks, np.int64)


def distances(code_P: np.ndarray, db_NxP: np.ndarray) -> np.ndarray:
  """Hamming distances int32 [N] between one packed code [P] and packed codes [N, P]."""
  return _POPCOUNT[np.bitwise_xor(db_NxP, code_P)].sum(axis=1, dtype=np.int32)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """Concatenated aranges lo[i]..hi[i]−1, int64."""
  lengths = hi - lo
  total = int(lengths.sum())
  if not total:
    return np.zeros(0, np.int64)
  starts = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
  return starts + np.arange(total)


@dataclasses.dataclass
class MultiIndex:
  """The m substring tables of packed codes uint8 [N, P] with `bits` bits each.

  Attributes:
    bounds: [start, stop) of each substring. order: per table, item ids sorted by key (stable:
      ties in index order), int32/int64 [N]. offsets: per table, int64 [2**len + 1], the run
      of key v is order[offsets[v]:offsets[v + 1]].
  """
  bits: int
  bounds: list
  order: list
  offsets: list

  @classmethod
  def build(cls, db_NxP: np.ndarray, bits: int, m: int | None = None) -> 'MultiIndex':
    """Tables for packed codes [N, P]; m: substrings (None: `choose_substrings`)."""
    m = choose_substrings(len(db_NxP), bits) if m is None else int(m)
    if not 1 <= m <= bits or math.ceil(bits / m) > MAX_KEY_BITS:
      raise ValueError(f'm={m} substrings of {bits} bits: accepted m in '
                       f'{math.ceil(bits / MAX_KEY_BITS)}..{bits}')
    id_dtype = np.int32 if len(db_NxP) < 2**31 else np.int64
    bounds, order, offsets = substring_bounds(bits, m), [], []
    for start, stop in bounds:
      keys = substring_keys(db_NxP, start, stop)
      order.append(np.argsort(keys, kind='stable').astype(id_dtype))
      counts = np.bincount(keys, minlength=1 << (stop - start))
      offsets.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    return cls(bits, bounds, order, offsets)

  @property
  def m(self) -> int:
    return len(self.bounds)

  def arrays(self) -> dict[str, np.ndarray]:
    """The tables as named arrays (saved with a HammingIndex)."""
    out = {'mih_bounds': np.asarray(self.bounds, np.int64)}
    for j in range(self.m):
      out[f'mih_order_{j}'], out[f'mih_offsets_{j}'] = self.order[j], self.offsets[j]
    return out

  @classmethod
  def from_arrays(cls, arrays: dict[str, np.ndarray], bits: int) -> 'MultiIndex':
    bounds = [tuple(map(int, b)) for b in arrays['mih_bounds']]
    return cls(bits, bounds, [arrays[f'mih_order_{j}'] for j in range(len(bounds))],
               [arrays[f'mih_offsets_{j}'] for j in range(len(bounds))])

  def search_one(self, code_P: np.ndarray, db_NxP: np.ndarray, topk: int,
                 max_work: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(distances int32 [T], ids int64 [T]) of the topk nearest, ties by index; None when the
    work would pass max_work × N (the caller scans linearly)."""
    num = len(db_NxP)
    keys = [int(substring_keys(code_P[None], a, b)[0]) for a, b in self.bounds]
    longest = max(b - a for a, b in self.bounds)
    seen_ids, seen_dist = np.zeros(0, np.int64), np.zeros(0, np.int32)
    work, budget = 0, max_work * num
    for radius in range(longest + 1):
      found = []
      for j, (start, stop) in enumerate(self.bounds):
        if radius > stop - start:
          continue
        probes = keys[j] ^ flip_masks(stop - start, radius)
        positions = _ranges(self.offsets[j][probes], self.offsets[j][probes + 1])
        work += len(probes) + len(positions)
        if work > budget:
          return None
        found.append(self.order[j][positions])
      new = np.setdiff1d(np.concatenate(found), seen_ids) if found else seen_ids[:0]
      seen_ids = np.concatenate([seen_ids, new])
      seen_dist = np.concatenate([seen_dist, distances(code_P, db_NxP[new])])
      bound = self.m * (radius + 1) - 1
      if np.count_nonzero(seen_dist <= bound) >= topk or radius == longest:
        best = np.lexsort((seen_ids, seen_dist))[:topk]
        return seen_dist[best], seen_ids[best]
    raise AssertionError('unreachable: the last radius sees every item')

  def search(self, query_QxP: np.ndarray, db_NxP: np.ndarray, topk: int,
             linear: Callable, max_work: float = 0.05, sample: int = 16
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """(distances int32 [Q, T], ids int64 [Q, T], queries answered by `linear`).

    linear(query_codes [q, P], topk) → (distances, ids): the exact linear scan, used for
    the queries probing would not serve well.
    """
    num_query = len(query_QxP)
    dist = np.zeros((num_query, topk), np.int32)
    ids = np.zeros((num_query, topk), np.int64)
    fallback = []
    for q in range(num_query):
      if q >= sample and len(fallback) > q // 2:  # most fell back: scan the rest linearly
        fallback.extend(range(q, num_query))
        break
      answer = self.search_one(query_QxP[q], db_NxP, topk, max_work)
      if answer is None:
        fallback.append(q)
      else:
        dist[q], ids[q] = answer
    if fallback:
      dist[fallback], ids[fallback] = linear(query_QxP[fallback], topk)
    return dist, ids, len(fallback)
