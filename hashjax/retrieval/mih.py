"""Exact Hamming k-nearest-neighbour search by multi-index hashing (Norouzi, Punjani and Fleet,
CVPR 2012), on the host (numpy).

The tables hold the database's *distinct* codes (learned codes repeat: a trained model gives
each class a handful of codes; docs/retrieval.md counts them), each with the sorted ids of
its items. Each K-bit code is cut into m contiguous substrings; substring j of every distinct
code is a key of table j (the codes sorted by key, with the offset of every key's run). If an
item is within Hamming distance d of the query, some substring is within ⌊d/m⌋ of the
query's (the pigeonhole principle: the m substring distances add up to d). So probing, for
r = 0, 1, 2, ..., every key at distance r from each query substring has found every item
within distance m(r+1) − 1; once k items lie within that bound they contain the exact k
nearest. Ties are broken by database index: the items of the codes at the k-th distance are
merged from their sorted id lists.

m follows the paper: m ≈ K / log2(U) for U distinct codes, substrings of about log2 U bits, so
a bucket holds about one code of uniform codes. Where the codes are so crowded or spread out
that a query's work (keys probed + codes checked) passes `max_work` × N, the query goes to the
linear scan (`fallback`) instead; when most of the first queries of a batch do, the rest skip
the probing. The results are the same either way.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Callable

import numpy as np

from hashjax.retrieval import codes as codes_lib

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


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """Concatenated aranges lo[i]..hi[i]−1, int64."""
  lengths = hi - lo
  total = int(lengths.sum())
  if not total:
    return np.zeros(0, np.int64)
  starts = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
  return starts + np.arange(total)


def distinct_codes(db_NxP: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(distinct codes uint8 [U, P], member ids int32 (int64 past 2**31 items) [N] grouped by
  code, each group in index order, offsets int64 [U + 1]: the items of code u are
  members[offsets[u]:offsets[u + 1]])."""
  db = np.ascontiguousarray(db_NxP)
  rows = db.view(np.dtype((np.void, db.shape[1]))).ravel()
  unique, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
  members = np.argsort(inverse.ravel(), kind='stable').astype(
      np.int32 if len(db) < 2**31 else np.int64)  # int32 ids: half the memory
  codes = np.frombuffer(unique.tobytes(), np.uint8).reshape(len(unique), db.shape[1])
  return codes, members, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


@dataclasses.dataclass
class MultiIndex:
  """The m substring tables over the distinct codes of packed codes uint8 [N, P].

  Attributes:
    bits: code length. bounds: [start, stop) of each substring.
    codes: distinct codes uint8 [U, P]; members, member_offsets: their items (`distinct_codes`).
    order: per table, distinct-code ids sorted by key, like members' dtype [U]. offsets: int64
      [2**len + 1]: the run of key v is order[offsets[v]:offsets[v + 1]].
  """
  bits: int
  bounds: list
  codes: np.ndarray
  members: np.ndarray
  member_offsets: np.ndarray
  order: list
  offsets: list

  @classmethod
  def build(cls, db_NxP: np.ndarray, bits: int, m: int | None = None) -> 'MultiIndex':
    """Tables for packed codes [N, P]; m: substrings (None: `choose_substrings` of the number
    of distinct codes)."""
    codes, members, member_offsets = distinct_codes(db_NxP)
    m = choose_substrings(len(codes), bits) if m is None else int(m)
    if not 1 <= m <= bits or math.ceil(bits / m) > MAX_KEY_BITS:
      raise ValueError(f'm={m} substrings of {bits} bits: accepted m in '
                       f'{math.ceil(bits / MAX_KEY_BITS)}..{bits}')
    bounds, order, offsets = substring_bounds(bits, m), [], []
    for start, stop in bounds:
      keys = substring_keys(codes, start, stop)
      order.append(np.argsort(keys, kind='stable').astype(members.dtype))
      counts = np.bincount(keys, minlength=1 << (stop - start))
      offsets.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    return cls(bits, bounds, codes, members, member_offsets, order, offsets)

  @property
  def m(self) -> int:
    return len(self.bounds)

  def arrays(self) -> dict[str, np.ndarray]:
    """The tables as named arrays (saved with a HammingIndex)."""
    out = {'mih_bounds': np.asarray(self.bounds, np.int64), 'mih_codes': self.codes,
           'mih_members': self.members, 'mih_member_offsets': self.member_offsets}
    for j in range(self.m):
      out[f'mih_order_{j}'], out[f'mih_offsets_{j}'] = self.order[j], self.offsets[j]
    return out

  @classmethod
  def from_arrays(cls, arrays: dict[str, np.ndarray], bits: int) -> 'MultiIndex':
    bounds = [tuple(map(int, b)) for b in arrays['mih_bounds']]
    return cls(bits, bounds, arrays['mih_codes'], arrays['mih_members'],
               arrays['mih_member_offsets'], [arrays[f'mih_order_{j}'] for j in
                                              range(len(bounds))],
               [arrays[f'mih_offsets_{j}'] for j in range(len(bounds))])

  def _answer(self, seen: np.ndarray, dist: np.ndarray, topk: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The topk items of the seen distinct codes, by (distance, id)."""
    order = np.argsort(dist, kind='stable')
    seen, dist = seen[order], dist[order]
    sizes = self.member_offsets[seen + 1] - self.member_offsets[seen]
    kth = dist[np.searchsorted(np.cumsum(sizes), topk)]  # the k-th item's distance
    whole = dist < kth  # every item of these codes is in the answer (fewer than topk)
    at_kth = np.flatnonzero(dist == kth)
    need = topk - int(sizes[whole].sum())
    # The `need` smallest ids among the codes at the k-th distance: each list is sorted, so
    # its first `need` ids are all it can contribute.
    firsts = _ranges(self.member_offsets[seen[at_kth]],
                     np.minimum(self.member_offsets[seen[at_kth]] + need,
                                self.member_offsets[seen[at_kth] + 1]))
    tail = np.sort(self.members[firsts])[:need]
    head_codes = np.flatnonzero(whole)
    head = self.members[_ranges(self.member_offsets[seen[head_codes]],
                                self.member_offsets[seen[head_codes] + 1])]
    head_dist = np.repeat(dist[head_codes], sizes[head_codes])
    keep = np.lexsort((head, head_dist))
    return (np.concatenate([head_dist[keep], np.full(need, kth)]).astype(np.int32),
            np.concatenate([head[keep], tail]).astype(np.int64))

  def scratch(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-search working memory: a seen flag and a slot per distinct code (a query clears
    the flags it set, so one scratch serves a batch; threads need their own)."""
    return np.zeros(len(self.codes), bool), np.empty(len(self.codes), np.int64)

  def search_one(self, code_P: np.ndarray, topk: int, max_work: float, scratch=None
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """(distances int32 [T], ids int64 [T]) of the topk nearest items, ties by index; None when
    the work would pass max_work × N (the caller scans linearly)."""
    flags, slot = scratch or self.scratch()
    return self._probe(code_P, topk, max_work, flags, slot)

  def _fresh(self, found: list, flags: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """The distinct codes in `found` not seen before, each once; marks them seen."""
    candidates = np.concatenate(found) if found else np.zeros(0, np.int64)
    fresh = candidates[~flags[candidates]]
    slot[fresh] = np.arange(len(fresh))
    fresh = fresh[slot[fresh] == np.arange(len(fresh))]  # duplicates: only the last one stays
    flags[fresh] = True
    return fresh

  def _probe(self, code_P, topk, max_work, flags, slot):
    seen = np.zeros(0, np.int64)
    keys = [int(substring_keys(code_P[None], a, b)[0]) for a, b in self.bounds]
    longest = max(b - a for a, b in self.bounds)
    seen_dist = np.zeros(0, np.uint16)
    work, budget = 0, max_work * len(self.members)  # a share of the linear scan's N items
    try:
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
        new = self._fresh(found, flags, slot)
        seen = np.concatenate([seen, new])
        seen_dist = np.concatenate([seen_dist, codes_lib.host_distances(code_P, self.codes[new])])
        within = seen_dist <= self.m * (radius + 1) - 1
        sizes = self.member_offsets[seen[within] + 1] - self.member_offsets[seen[within]]
        if sizes.sum() >= topk or radius == longest:
          return self._answer(seen[within] if radius < longest else seen,
                              seen_dist[within] if radius < longest else seen_dist, topk)
      raise AssertionError('unreachable: the last radius sees every code')
    finally:
      flags[seen] = False  # the scratch is clean for the next query

  def search(self, query_QxP: np.ndarray, topk: int, linear: Callable,
             max_work: float = 0.005, sample: int = 16) -> tuple[np.ndarray, np.ndarray, int]:
    """(distances int32 [Q, T], ids int64 [Q, T], queries answered by `linear`).

    linear(query_codes [q, P], topk) → (distances, ids): the exact linear scan, used for
    the queries probing would not serve well.
    """
    num_query = len(query_QxP)
    dist = np.zeros((num_query, topk), np.int32)
    ids = np.zeros((num_query, topk), np.int64)
    fallback, scratch = [], self.scratch()
    for q in range(num_query):
      if q >= sample and len(fallback) > q // 2:  # most fell back: scan the rest linearly
        fallback.extend(range(q, num_query))
        break
      answer = self.search_one(query_QxP[q], topk, max_work, scratch)
      if answer is None:
        fallback.append(q)
      else:
        dist[q], ids[q] = answer
    if fallback:
      dist[fallback], ids[fallback] = linear(query_QxP[fallback], topk)
    return dist, ids, len(fallback)
