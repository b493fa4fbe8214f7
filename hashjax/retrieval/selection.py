"""Exact top-k over rows of Hamming distances, with no sort over the database.

Per row of distances [N] (N a multiple of `BLOCK`), the k nearest items with ties by index
are the items closer than the k-th smallest distance t and the first k − #closer items at
distance t. So:

1. t comes from counting passes (#distance ≤ v, two thresholds v per pass): a guess from
   every 16th block of items, then passes next to the guess (a right guess is settled by
   one pass, one off by ±1 or ±2 by two), then thirds of what is left;
2. one pass packs the flags "closer than t" and "at t" into bit words; a ranked selection
   finds the last item at t that is taken, and a second one lists the k taken items in
   index order;
3. the caller orders those k items by distance on the host (`ranking.order_by_distance`: a
   radix sort of small integers, where XLA:CPU has only comparison sorts).

Counts are uint8 sums over a major axis, which XLA:CPU vectorises, unlike a row sum in int32
(the costs of both: docs/PERFORMANCE.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


BLOCK = 128  # flags per block of the ranked selection; rows of N must be a multiple of it
SAMPLE_STRIDE = 16  # the guess of t counts every 16th block


def count_true(mask_QxN: jax.Array) -> jax.Array:
  """#True per row, int32 [Q]; N a multiple of 32. Partial counts in uint8 over 32 strided
  slices (a reduction over a major axis, which XLA:CPU vectorises along the minor one)."""
  q, n = mask_QxN.shape
  strided = mask_QxN.reshape(q, 32, n // 32).astype(jnp.uint8)
  return jnp.sum(jnp.sum(strided, axis=1, dtype=jnp.uint8).astype(jnp.int32), axis=1)


def _prefix_sum(x_QxB: jax.Array) -> jax.Array:
  """Inclusive prefix sum along axis 1 (XLA:CPU lowers jnp.cumsum to a reduce-window that
  costs O(B) per element; the associative scan costs O(log B))."""
  return jax.lax.associative_scan(jnp.add, x_QxB, axis=1)


_PROBES = 2  # thresholds counted per pass: a byte counter each in a uint16


def _counts_at_most(dist_QxN: jax.Array, probe_QxW: jax.Array) -> jax.Array:
  """#{distance ≤ probe} per row and probe, int32 [Q, W], in one pass over [Q, N]: W ≤ 2
  byte counters per uint16, summed over 32 strided slices (each byte ≤ 32): two in a uint16
  cost as much as one in a uint8 on XLA:CPU, four in a uint32 far more (docs/PERFORMANCE.md)."""
  q, n = dist_QxN.shape
  strided = dist_QxN.reshape(q, 32, n // 32)
  flags = sum((strided <= probe_QxW[:, j, None, None].astype(dist_QxN.dtype)).astype(
      jnp.uint16) << (8 * j) for j in range(probe_QxW.shape[1]))
  partial_QxU = jnp.sum(flags, axis=1, dtype=jnp.uint16)
  shifts = 8 * jnp.arange(probe_QxW.shape[1], dtype=jnp.uint16)
  per_probe = (partial_QxU[:, :, None] >> shifts) & jnp.uint16(255)
  return jnp.sum(per_probe.astype(jnp.int32), axis=1)


def _probe(dist_QxN: jax.Array, guess_Q, topk: int, state):
  """One step of `_search`: count `_PROBES` thresholds per row, narrow [lo, hi]."""
  lo_Q, hi_Q, below_Q, step = state
  offsets_W = jnp.arange(_PROBES, dtype=jnp.int32)
  probe_QxW = lo_Q[:, None] + ((hi_Q - lo_Q)[:, None] * (offsets_W + 1)) // (_PROBES + 1)
  if guess_Q is not None:
    near_Q = jnp.clip(guess_Q - 1, lo_Q, jnp.maximum(hi_Q - _PROBES, lo_Q))
    probe_QxW = jnp.where(step < 3, near_Q[:, None] + offsets_W, probe_QxW)
  probe_QxW = jnp.minimum(probe_QxW, hi_Q[:, None])
  count_QxW = _counts_at_most(dist_QxN, probe_QxW)
  short_Q = jnp.sum(count_QxW < topk, axis=1)  # counts grow with the probe: a prefix
  at = lambda a, i_Q: jnp.take_along_axis(a, i_Q[:, None], axis=1)[:, 0]
  last_short_Q = jnp.maximum(short_Q - 1, 0)
  lo_Q = jnp.where(short_Q > 0, at(probe_QxW, last_short_Q) + 1, lo_Q)
  below_Q = jnp.where(short_Q > 0, at(count_QxW, last_short_Q), below_Q)
  first_enough_Q = at(probe_QxW, jnp.minimum(short_Q, _PROBES - 1))
  hi_Q = jnp.where(short_Q < _PROBES, jnp.minimum(hi_Q, first_enough_Q), hi_Q)
  return lo_Q, hi_Q, below_Q, step + 1


def _search(dist_QxN: jax.Array, guess_Q, bits: int, topk: int, steps: int | None = None):
  """Smallest t in [0, bits] with #{distance ≤ t} ≥ topk per row, and #{distance < t}
  (int32 [Q] each). Needs #{distance ≤ bits} ≥ topk.

  Each step (one pass) counts `_PROBES` consecutive thresholds per row inside its bracket
  [lo, hi]. With a guess (int32 [Q]) the first steps probe next to it: [guess − 1, guess]
  settles t = guess in one pass, t = guess ± 1 or ± 2 in two. Then (or without a guess) the
  probes split the bracket into thirds. With `steps`, exactly that many unrolled steps, and t
  is only bracketed: the result is then the bracket's top (a guess, not the answer).
  """
  q = dist_QxN.shape[0]
  zeros = jnp.zeros((q,), jnp.int32)
  state = (zeros, jnp.full((q,), bits, jnp.int32), zeros, jnp.int32(0))
  step = lambda state: _probe(dist_QxN, guess_Q, topk, state)
  if steps is not None:  # no loop: on XLA:CPU a loop step costs more than a small pass
    for _ in range(steps):
      state = step(state)
  else:
    state = jax.lax.while_loop(lambda state: jnp.any(state[0] < state[1]), step, state)
  return state[1], state[2]


def sample_blocks(n: int) -> bool:
  return n // BLOCK >= 4 * SAMPLE_STRIDE


def _kth(dist_QxN: jax.Array, topk: int, bits: int, sample_QxS: jax.Array | None = None):
  q, n = dist_QxN.shape
  guess_Q = None
  if sample_blocks(n):
    if sample_QxS is None:
      sample_QxS = dist_QxN.reshape(q, n // BLOCK, BLOCK)[:, ::SAMPLE_STRIDE].reshape(q, -1)
    goal = max(1, int(round(topk * sample_QxS.shape[1] / n)))
    thirds = int(np.ceil(np.log(bits + 1) / np.log(_PROBES + 1)))  # enough steps for [0, bits]
    guess_Q = _search(sample_QxS, None, bits, goal, steps=thirds)[0]
  return _search(dist_QxN, guess_Q, bits, topk)


def kth_distance(dist_QxN: jax.Array, topk: int, bits: int) -> tuple[jax.Array, jax.Array]:
  """(t, #closer), int32 [Q] each: t the smallest distance with #{distance ≤ t} ≥ topk, and
  #{distance < t}. Needs 1 ≤ topk ≤ the row's items at distance ≤ bits."""
  return _kth(dist_QxN, topk, bits)


def _pack(mask_QxN: jax.Array) -> jax.Array:
  """Flags packed 32 to a uint32 word, flag 32·u + j at bit j of word u: [Q, N / 32]."""
  q, n = mask_QxN.shape
  shifts = jnp.arange(8, dtype=jnp.uint8)
  flags = mask_QxN.reshape(q, n // 32, 4, 8).astype(jnp.uint8) << shifts
  bytes_QxUx4 = jnp.sum(flags, axis=3, dtype=jnp.uint8)  # distinct bits: the sum is the or
  # Byte i of a word holds flags 8·i..8·i + 7: narrow sums vectorise, and XLA's platforms
  # are little-endian (tests/retrieval/test_selection.py checks the order).
  return jax.lax.bitcast_convert_type(bytes_QxUx4, jnp.uint32)


def _even_bits(x: jax.Array) -> jax.Array:
  """Bits 0, 2, …, 30 of each uint32, moved to bits 0..15."""
  x = x & jnp.uint32(0x55555555)
  for shift, keep in ((1, 0x33333333), (2, 0x0F0F0F0F), (4, 0x00FF00FF), (8, 0x0000FFFF)):
    x = (x | (x >> shift)) & jnp.uint32(keep)
  return x


def _pack_pair(low_QxN: jax.Array, high_QxN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`_pack` of two disjoint masks in one pass over [Q, N]: 2-bit codes, 4 to a byte."""
  q, n = low_QxN.shape
  code = low_QxN.astype(jnp.uint8) + 2 * high_QxN.astype(jnp.uint8)
  shifts = jnp.arange(0, 8, 2, dtype=jnp.uint8)
  bytes_QxVx4 = jnp.sum(code.reshape(q, n // 16, 4, 4) << shifts, axis=3, dtype=jnp.uint8)
  pairs_QxV = jax.lax.bitcast_convert_type(bytes_QxVx4, jnp.uint32)  # 16 items per word
  words = lambda half_QxV: half_QxV[:, 0::2] | (half_QxV[:, 1::2] << 16)
  return words(_even_bits(pairs_QxV)), words(_even_bits(pairs_QxV >> 1))


def _index(words_QxU: jax.Array):
  """(words, their popcounts int32 [Q, U], #True per block int32 [Q, B], inclusive prefix
  of those [Q, B]) for `_select_in_blocks`; B = 32·U / BLOCK."""
  q, u = words_QxU.shape
  pops_QxU = jax.lax.population_count(words_QxU).astype(jnp.int32)
  block_QxB = jnp.sum(pops_QxU.reshape(q, u * 32 // BLOCK, BLOCK // 32), axis=2)
  return words_QxU, pops_QxU, block_QxB, _prefix_sum(block_QxB)


def _select_in_blocks(packed, block_QxT: jax.Array, rank_QxT: jax.Array) -> jax.Array:
  """Index of the (rank + 1)-th True entry, given the block that holds it; int32 [Q, T]."""
  words_QxU, pops_QxU, block_QxB, upto_QxB = packed
  take = lambda a, i: jnp.take_along_axis(a, i, axis=1)
  rank_QxT = rank_QxT - take(upto_QxB - block_QxB, block_QxT)
  word_QxT = block_QxT * (BLOCK // 32)
  for _ in range(BLOCK // 32 - 1):  # walk the block's words
    pop_QxT = take(pops_QxU, word_QxT)
    move_QxT = rank_QxT >= pop_QxT
    rank_QxT = jnp.where(move_QxT, rank_QxT - pop_QxT, rank_QxT)
    word_QxT = jnp.where(move_QxT, word_QxT + 1, word_QxT)
  bits_QxT, rank_in_word = take(words_QxU, word_QxT), rank_QxT.astype(jnp.uint32)
  # The bit of the rank-th set flag: the largest p with popcount(bits below p) ≤ rank.
  pos_QxT = jnp.zeros_like(rank_in_word)
  for step in (16, 8, 4, 2, 1):
    cand_QxT = pos_QxT + step
    below = jax.lax.population_count(bits_QxT & ((jnp.uint32(1) << cand_QxT) - 1))
    pos_QxT = jnp.where(below <= rank_in_word, cand_QxT, pos_QxT)
  return word_QxT * 32 + pos_QxT.astype(jnp.int32)


def _first_in_words(words_QxU: jax.Array, topk: int) -> tuple[jax.Array, jax.Array]:
  packed = _index(words_QxU)
  upto_QxB = packed[3]
  slots_hist = jax.vmap(lambda upto_B: jnp.zeros(topk + 1, jnp.int32).at[
      jnp.minimum(upto_B, topk)].add(1))(upto_QxB)
  block_QxT = jnp.minimum(_prefix_sum(slots_hist[:, :topk]), upto_QxB.shape[1] - 1)
  rank_QxT = jnp.broadcast_to(jnp.arange(topk, dtype=jnp.int32), block_QxT.shape)
  return _select_in_blocks(packed, block_QxT, rank_QxT), rank_QxT < upto_QxB[:, -1:]


def select_first(mask_QxN: jax.Array, topk: int) -> tuple[jax.Array, jax.Array]:
  """Indices of the first `topk` True entries of each row, in index order: (int32 [Q, T],
  valid bool [Q, T]); slots past the row's count are invalid. Cost O(N + T) per row: the
  block of slot s is the number of blocks whose prefix count is ≤ s, a prefix sum over the
  slots of a histogram of the blocks' prefix counts."""
  return _first_in_words(_pack(mask_QxN), topk)


def nearest_in_index_order(dist_QxN: jax.Array, topk: int, bits: int,
                           sample_QxS: jax.Array | None = None) -> jax.Array:
  """The topk nearest items of each row (ties by index), listed in index order: int32 [Q, T].
  Needs topk ≤ the row's items at distance ≤ bits. `sample_QxS`: see `distances_and_sample`
  (any sample gives the same result; it only guides the search)."""
  t_Q, closer_Q = _kth(dist_QxN, topk, bits, sample_QxS)
  t_Qx1 = t_Q.astype(dist_QxN.dtype)[:, None]
  closer_QxU, at_t_QxU = _pack_pair(dist_QxN < t_Qx1, dist_QxN == t_Qx1)
  at_t = _index(at_t_QxU)
  rank_Qx1 = (topk - closer_Q - 1)[:, None]
  block_Qx1 = jax.vmap(lambda upto_B, rank: jnp.searchsorted(upto_B, rank, side='right'))(
      at_t[3], rank_Qx1)
  last_Qx1 = _select_in_blocks(at_t, block_Qx1.astype(jnp.int32), rank_Qx1)
  # Words of the taken set: the closer items, and the items at t up to the last one taken.
  start_U = 32 * jnp.arange(at_t_QxU.shape[1], dtype=jnp.int32)
  upto_bit_QxU = jnp.clip(last_Qx1 - start_U[None, :], -1, 31).astype(jnp.uint32)
  keep_QxU = jnp.where(last_Qx1 >= start_U[None, :],
                       (jnp.uint32(2) << upto_bit_QxU) - 1, jnp.uint32(0))
  return _first_in_words(closer_QxU | (at_t_QxU & keep_QxU), topk)[0]
