"""Binary codes: sign, bit packing, Hamming distance.

Conventions used across hashjax:

* A *code* is a ±1 array `codes_NxK` (any float or integer dtype), one row per item, K bits.
* A *packed code* is a uint8 array `packed_NxP` with P = ceil(K / 8): bit k of a row is +1 → 1,
  −1 → 0, most significant bit first within each byte (numpy's `packbits` order). Packed codes
  are 8× smaller and are what `codes.npz` stores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sign_codes(z_NxK: jax.Array) -> jax.Array:
  """Binarises continuous hash outputs: +1 where z ≥ 0, −1 where z < 0.

  Args:
    z_NxK: real array [..., K] (pre-activation z or tanh(βz); the sign is the same).

  Returns:
    int8 array of the same shape with values in {−1, +1}; sign(0) = +1, so every bit is
    defined (unlike `jnp.sign`, which maps 0 to 0).
  """
  return jnp.where(jnp.asarray(z_NxK) >= 0, 1, -1).astype(jnp.int8)


def pack_codes(codes_NxK) -> np.ndarray:
  """Packs ±1 codes [N, K] into uint8 bytes [N, ceil(K/8)] (+1 → bit 1, MSB first).

  Runs on the host (numpy); packing is a storage step, not part of a jitted computation.
  Values must be exactly −1 or +1.
  """
  codes = np.asarray(codes_NxK)
  if codes.ndim != 2:
    raise ValueError(f'pack_codes expects codes of shape [N, K], got shape {codes.shape}')
  if not np.all(np.abs(codes) == 1):
    raise ValueError('pack_codes expects codes with values in {-1, +1}; use sign_codes first')
  return np.packbits(codes > 0, axis=1)


def unpack_codes(packed_NxP, bits: int) -> np.ndarray:
  """Inverse of `pack_codes`: uint8 [N, P] → int8 ±1 codes [N, bits]."""
  packed = np.asarray(packed_NxP)
  if packed.dtype != np.uint8 or packed.ndim != 2:
    raise ValueError(
        f'unpack_codes expects uint8 [N, P], got {packed.dtype} of shape {packed.shape}')
  if not 0 < bits <= 8 * packed.shape[1]:
    raise ValueError(f'bits={bits} does not fit {packed.shape[1]} bytes per code '
                     f'(accepted: 1..{8 * packed.shape[1]})')
  bits_NxK = np.unpackbits(packed, axis=1, count=bits)
  return (2 * bits_NxK.astype(np.int8) - 1).astype(np.int8)


def hamming_distance(query_QxK: jax.Array, db_NxK: jax.Array) -> jax.Array:
  """All-pairs Hamming distances between two sets of codes.

  Args:
    query_QxK: ±1 codes [Q, K], or packed uint8 codes [Q, P].
    db_NxK: codes of the same kind [N, K] (or [N, P] packed).

  Returns:
    int32 [Q, N]: the number of differing bits. uint8 inputs are taken as packed codes
    (popcount of XOR); anything else as ±1 codes, where d = (K − ⟨q, x⟩) / 2.
  """
  query, db = jnp.asarray(query_QxK), jnp.asarray(db_NxK)
  if query.shape[-1] != db.shape[-1]:
    raise ValueError(f'code lengths differ: query has {query.shape[-1]}, database {db.shape[-1]}')
  if query.dtype == jnp.uint8 and db.dtype == jnp.uint8:
    xor_QxNxP = jnp.bitwise_xor(query[:, None, :], db[None, :, :])
    return jax.lax.population_count(xor_QxNxP).astype(jnp.int32).sum(-1)
  bits = query.shape[-1]
  # ±1 entries make the float32 inner product exact for any K < 2**24.
  inner_QxN = jnp.dot(query.astype(jnp.float32), db.astype(jnp.float32).T)
  return ((bits - inner_QxN) // 2).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Exact Hamming ranking without sorting whole rows.
#
# Distances are small integers 0..bits, so the topk nearest items of a query are: every item
# closer than a threshold distance t, then the first (in database index order) items at
# distance exactly t. t comes from a binary search on counts (ceil(log2(bits + 1)) passes over
# uint8 distances); the items are gathered in index order with a word-level prefix count
# (32 items per uint32 word, popcount select); only those ≤ topk items are sorted.
# ---------------------------------------------------------------------------------------------

ALIGN = 256  # database rows are padded to a multiple of this (word packing, uint8 block sums)


def code_words(codes) -> np.ndarray:
  """±1 codes [N, K] or packed uint8 [N, P] → uint32 words [N, U], U = ceil(P / 4), zero padded.

  Zero padding is the same in every row, so it never changes a Hamming distance.
  """
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise ValueError(f'codes must have shape [N, K] or packed [N, P], got shape {codes.shape}')
  packed = codes if codes.dtype == np.uint8 else pack_codes(codes)
  pad = (-packed.shape[1]) % 4
  if pad:
    packed = np.concatenate([packed, np.zeros((len(packed), pad), np.uint8)], axis=1)
  return np.ascontiguousarray(packed).view(np.uint32)


def code_bits(codes) -> int:
  """Number of bits of ±1 codes [N, K] (K) or packed uint8 codes [N, P] (8·P)."""
  codes = np.asarray(codes)
  return 8 * codes.shape[1] if codes.dtype == np.uint8 else codes.shape[1]


def distance_dtype(bits: int):
  """uint8 while every distance and the padding sentinel (dtype max) fit, else uint16."""
  return jnp.uint8 if bits < 255 else jnp.uint16


_POPCOUNT = np.array([bin(i).count('1') for i in range(256)], np.uint8)


def host_distances(code_P: np.ndarray, db_NxP: np.ndarray) -> np.ndarray:
  """Hamming distances uint16 [N] from one packed code [P] to packed codes [N, P], on the host
  (numpy). A small unsigned type: numpy's stable argsort of it is a radix sort."""
  xor = np.bitwise_xor(db_NxP, code_P)
  if hasattr(np, 'bitwise_count'):  # numpy ≥ 2: a popcount instruction per 64-bit word
    if xor.shape[1] % 8 == 0 and xor.flags.c_contiguous:
      xor = xor.view(np.uint64)
    return np.bitwise_count(xor).sum(axis=1, dtype=np.uint16)
  return _POPCOUNT[xor].sum(axis=1, dtype=np.uint16)


def row_bucket(num_rows: int) -> int:
  """The padded length for `num_rows` database rows: a multiple of ALIGN and of 2**(⌊log2 N⌋−3),
  so at most 1/8 of the rows are padding and a growing database compiles O(log N) programs."""
  step = max(ALIGN, 1 << max(0, int(num_rows).bit_length() - 4))
  return max(step, -(-int(num_rows) // step) * step)


def pad_rows(array, multiple: int = ALIGN, value=0) -> np.ndarray:
  """Pads axis 0 of a host array to a multiple of `multiple` with `value`."""
  array = np.asarray(array)
  pad = (-len(array)) % multiple
  if not pad:
    return array
  fill = np.full((pad,) + array.shape[1:], value, array.dtype)
  return np.concatenate([array, fill])


def word_distances(query_QxU: jax.Array, db_NxU: jax.Array, num_valid: int,
                   bits: int) -> jax.Array:
  """Hamming distances [Q, N] between uint32 word codes (see `code_words`), traceable.

  Rows of the database at or after `num_valid` (padding) get the dtype's max, a sentinel
  larger than any real distance. `num_valid` is a Python int, or a traced int32 scalar (one
  compiled program then serves every database size up to the padded length).
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


def _count_at_most(dist_QxN: jax.Array, t_Q: jax.Array) -> jax.Array:
  """#items with distance ≤ t per query, int32 [Q]; uint8 partial sums over blocks of 128."""
  q, n = dist_QxN.shape
  le = (dist_QxN.reshape(q, n // 128, 128) <= t_Q.astype(dist_QxN.dtype)[:, None, None])
  return jnp.sum(jnp.sum(le.astype(jnp.uint8), axis=2, dtype=jnp.uint8).astype(jnp.int32), 1)


def threshold_distance(dist_QxN: jax.Array, topk: int, bits: int) -> jax.Array:
  """Smallest t with #{distance ≤ t} ≥ topk per query (int32 [Q]); needs topk ≤ valid items.
  """
  lo_Q = jnp.zeros(dist_QxN.shape[:1], jnp.int32)
  hi_Q = jnp.full(dist_QxN.shape[:1], bits, jnp.int32)

  def halve(_, bounds):
    lo_Q, hi_Q = bounds
    mid_Q = (lo_Q + hi_Q) // 2
    enough_Q = _count_at_most(dist_QxN, mid_Q) >= topk
    return jnp.where(enough_Q, lo_Q, mid_Q + 1), jnp.where(enough_Q, mid_Q, hi_Q)

  steps = int(np.ceil(np.log2(bits + 1)))
  return jax.lax.fori_loop(0, steps, halve, (lo_Q, hi_Q))[1]


def select_first(mask_QxN: jax.Array, topk: int) -> tuple[jax.Array, jax.Array]:
  """Indices of the first `topk` True entries of each row, in index order.

  Returns (indices int32 [Q, T], valid bool [Q, T]), T = topk; slots past the row's count are
  invalid. N must be a multiple of 32. Cost O(N) per row plus O(T log N): a prefix count over
  uint32 words of 32 flags, then a binary search per slot and a popcount select inside the word.
  """
  q, n = mask_QxN.shape
  shifts = jnp.arange(32, dtype=jnp.uint32)
  flags_QxUx32 = mask_QxN.reshape(q, n // 32, 32).astype(jnp.uint32) << shifts
  words_QxU = jnp.sum(flags_QxUx32, axis=2, dtype=jnp.uint32)  # distinct bits: sum == or
  count_QxU = jax.lax.population_count(words_QxU).astype(jnp.int32)
  upto_QxU = jnp.cumsum(count_QxU, axis=1)
  slots_T = jnp.arange(topk, dtype=jnp.int32)
  word_QxT = jax.vmap(lambda upto_U: jnp.searchsorted(upto_U, slots_T, side='right'))(upto_QxU)
  word_QxT = jnp.minimum(word_QxT, n // 32 - 1).astype(jnp.int32)
  bits_QxT = jnp.take_along_axis(words_QxU, word_QxT, axis=1)
  rank_QxT = (slots_T - jnp.take_along_axis(upto_QxU - count_QxU, word_QxT, axis=1))
  rank_QxT = rank_QxT.astype(jnp.uint32)
  # The bit of the rank-th set flag: the largest p with popcount(bits below p) ≤ rank.
  pos_QxT = jnp.zeros_like(rank_QxT)
  for step in (16, 8, 4, 2, 1):
    cand_QxT = pos_QxT + step
    below = jax.lax.population_count(bits_QxT & ((jnp.uint32(1) << cand_QxT) - 1))
    pos_QxT = jnp.where(below <= rank_QxT, cand_QxT, pos_QxT)
  valid_QxT = slots_T[None, :] < upto_QxU[:, -1:]
  return word_QxT * 32 + pos_QxT.astype(jnp.int32), valid_QxT


def topk_from_distances(dist_QxN: jax.Array, topk: int, bits: int
                        ) -> tuple[jax.Array, jax.Array]:
  """The topk nearest items per row, ascending distance, ties by index; int32 ([Q, T], [Q, T])
  (distances, indices), T = topk.

  Needs topk ≤ number of valid (non-sentinel) items and N a multiple of 32.
  """
  q, n = dist_QxN.shape
  t_Q = threshold_distance(dist_QxN, topk, bits)
  t_Qx1 = t_Q.astype(dist_QxN.dtype)[:, None]
  closer_QxT, closer_valid_QxT = select_first(dist_QxN < t_Qx1, topk)
  at_t_QxT, _ = select_first(dist_QxN == t_Qx1, topk)
  num_closer_Q = jnp.sum(closer_valid_QxT, axis=1, dtype=jnp.int32)
  closer_dist_QxT = jnp.take_along_axis(dist_QxN, closer_QxT, axis=1).astype(jnp.int32)
  closer_dist_QxT = jnp.where(closer_valid_QxT, closer_dist_QxT, bits + 1)
  if (bits + 2) * n < 2**31:
    key_QxT = jnp.sort(closer_dist_QxT * n + closer_QxT, axis=1)
    closer_dist_QxT, closer_QxT = key_QxT // n, key_QxT % n
  else:
    closer_dist_QxT, closer_QxT = jax.lax.sort((closer_dist_QxT, closer_QxT), dimension=1,
                                                num_keys=2)
  slots_T = jnp.arange(topk, dtype=jnp.int32)
  from_t_QxT = jnp.take_along_axis(
      at_t_QxT, jnp.clip(slots_T[None, :] - num_closer_Q[:, None], 0, topk - 1), axis=1)
  is_closer_QxT = slots_T[None, :] < num_closer_Q[:, None]
  return (jnp.where(is_closer_QxT, closer_dist_QxT, t_Q[:, None]),
          jnp.where(is_closer_QxT, closer_QxT, from_t_QxT))


def query_chunk_size(num_db: int, chunk_size: int | None = None) -> int:
  """Queries per step: a multiple of the device count, ~2**24 query·item pairs per device."""
  devices = jax.local_device_count()
  if chunk_size is None:
    per_device = int(np.clip(2**24 // max(num_db, 1), 1, 256))
  else:
    per_device = max(1, -(-int(chunk_size) // devices))
  return per_device * devices


def query_chunks(num_query: int, chunk: int):
  """(start, stop) of each chunk; every chunk is later padded to `chunk` rows."""
  return [(s, min(s + chunk, num_query)) for s in range(0, num_query, chunk)]


def pad_chunk(array, chunk: int) -> np.ndarray:
  """Pads a query chunk to `chunk` rows by repeating its last row (one compiled shape)."""
  array = np.asarray(array)
  if len(array) == chunk:
    return array
  return np.concatenate([array, np.repeat(array[-1:], chunk - len(array), axis=0)])
