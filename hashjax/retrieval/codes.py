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


def code_words(codes) -> np.ndarray:
  """±1 codes [N, K] or packed uint8 [N, P] → uint32 words [N, U], U = ceil(P / 4), zero padded
  (uint32 words are returned as they are).

  Zero padding is the same in every row, so it never changes a Hamming distance.
  """
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise ValueError(f'codes must have shape [N, K] or packed [N, P], got shape {codes.shape}')
  if codes.dtype == np.uint32:
    return np.ascontiguousarray(codes)
  packed = codes if codes.dtype == np.uint8 else pack_codes(codes)
  pad = (-packed.shape[1]) % 4
  if pad:
    packed = np.concatenate([packed, np.zeros((len(packed), pad), np.uint8)], axis=1)
  return np.ascontiguousarray(packed).view(np.uint32)


def code_bits(codes) -> int:
  """Number of bits of ±1 codes [N, K] (K) or packed uint8 codes [N, P] (8·P)."""
  codes = np.asarray(codes)
  return 8 * codes.shape[1] if codes.dtype == np.uint8 else codes.shape[1]


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


