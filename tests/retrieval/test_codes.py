import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hashjax import hamming_distance, pack_codes, sign_codes, unpack_codes


def test_sign_maps_zero_to_plus_one():
  z = jnp.array([[-2.0, -0.0, 0.0, 1e-9, -1e-9]])
  np.testing.assert_array_equal(sign_codes(z), [[-1, 1, 1, 1, -1]])
  assert sign_codes(z).dtype == jnp.int8


@pytest.mark.parametrize('bits', [1, 8, 12, 33, 64])
def test_pack_unpack_round_trip(bits):
  codes = np.where(np.random.default_rng(bits).random((7, bits)) > 0.5, 1, -1)
  packed = pack_codes(codes)
  assert packed.dtype == np.uint8 and packed.shape == (7, -(-bits // 8))
  np.testing.assert_array_equal(unpack_codes(packed, bits), codes)


def test_pack_bit_order_is_msb_first():
  codes = np.array([[1, -1, -1, -1, -1, -1, -1, 1, 1]])
  np.testing.assert_array_equal(pack_codes(codes), [[0b10000001, 0b10000000]])


@pytest.mark.parametrize('bits', [8, 20, 64])
def test_hamming_packed_equals_pm1_equals_bruteforce(bits):
  rng = np.random.default_rng(0)
  q = np.where(rng.random((5, bits)) > 0.5, 1, -1)
  db = np.where(rng.random((9, bits)) > 0.5, 1, -1)
  brute = (q[:, None, :] != db[None, :, :]).sum(-1)
  distance = jax.jit(hamming_distance)  # as a jitted program uses it
  np.testing.assert_array_equal(distance(q, db), brute)
  np.testing.assert_array_equal(distance(pack_codes(q), pack_codes(db)), brute)


def test_bad_inputs_are_clear_errors():
  with pytest.raises(ValueError, match='values in'):
    pack_codes(np.array([[0, 1]]))
  with pytest.raises(ValueError, match='bits=20 does not fit'):
    unpack_codes(np.zeros((1, 2), np.uint8), 20)
  with pytest.raises(ValueError, match='code lengths differ'):
    hamming_distance(np.ones((1, 8)), np.ones((1, 9)))


def test_code_words_keep_hamming_distances():
  from hashjax.retrieval.codes import code_words
  from hashjax.retrieval.engine import word_distances
  rng = np.random.default_rng(1)
  q = np.where(rng.random((6, 21)) > 0.5, 1, -1)
  db = np.where(rng.random((64, 21)) > 0.5, 1, -1)
  words_q, words_db = code_words(q), code_words(pack_codes(db))
  assert words_q.dtype == np.uint32 and words_q.shape == (6, 1)
  dist = np.asarray(jax.jit(word_distances, static_argnums=(2, 3))(words_q, words_db, 60, 32))
  np.testing.assert_array_equal(dist[:, :60], (q[:, None] != db[None, :60]).sum(-1))
  assert np.all(dist[:, 60:] == 255)  # padding rows get the sentinel
