import numpy as np
import pytest

from hashjax.retrieval import mih
from hashjax.retrieval.search import hamming_topk


def _learned_like(num_base, copies, bits, flip, seed):
  """Distinct base codes, each copied with a few random bit flips (the MIH regime)."""
  rng = np.random.default_rng(seed)
  base = rng.random((num_base, bits)) > 0.5
  codes = base[np.repeat(np.arange(num_base), copies)] ^ (rng.random((num_base * copies, bits))
                                                         < flip)
  return np.packbits(codes, 1), np.packbits(base ^ (rng.random(base.shape) < flip), 1)


def _linear(db):
  return lambda query, topk: hamming_topk(query, db, topk)


@pytest.mark.parametrize('num, bits, expected', [(2**20, 64, 3), (10**7, 64, 3), (1000, 32, 3),
                                                 (10**6, 128, 6), (100, 8, 1), (2, 64, 64)])
def test_substrings_follow_the_paper_with_keys_of_at_most_24_bits(num, bits, expected):
  m = mih.choose_substrings(num, bits)
  assert m == expected
  assert max(b - a for a, b in mih.substring_bounds(bits, m)) <= mih.MAX_KEY_BITS


def test_substring_keys_are_the_codes_bits():
  rng = np.random.default_rng(0)
  bits_NxK = rng.random((50, 40)) > 0.5
  packed = np.packbits(bits_NxK, 1)
  for start, stop in mih.substring_bounds(40, 3) + [(3, 17), (0, 1), (39, 40)]:
    want = [int(''.join('1' if b else '0' for b in row[start:stop]), 2) for row in bits_NxK]
    assert mih.substring_keys(packed, start, stop).tolist() == want


def test_flip_masks_are_every_key_at_that_distance():
  masks = mih.flip_masks(6, 2)
  assert sorted(masks.tolist()) == [v for v in range(64) if bin(v).count('1') == 2]


@pytest.mark.parametrize('bits, topk', [(64, 10), (32, 1), (48, 30), (20, 7)])
def test_probing_finds_exactly_the_linear_scans_neighbours_and_tie_order(bits, topk):
  db, queries = _learned_like(300, 40, bits, 0.03, bits)
  index = mih.MultiIndex.build(db, bits)
  dist, ids, fallbacks = index.search(queries[:40], topk, _linear(db), max_work=1.0)
  want_dist, want_ids = hamming_topk(queries[:40], db, topk)
  assert fallbacks == 0  # every query answered by probing the tables
  np.testing.assert_array_equal(dist, want_dist)
  np.testing.assert_array_equal(ids, want_ids)


def test_duplicates_tie_by_index():
  db = np.repeat(np.packbits(np.random.default_rng(1).random((20, 32)) > 0.5, 1), 30, axis=0)
  index = mih.MultiIndex.build(db, 32, m=2)
  dist, ids, _ = index.search(db[[5, 599]], 50, _linear(db), max_work=1.0)
  want_dist, want_ids = hamming_topk(db[[5, 599]], db, 50)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(dist, want_dist)
  assert ids[0, :30].tolist() == sorted(ids[0, :30].tolist())


def test_crowded_or_spread_codes_fall_back_to_the_linear_scan_with_the_same_result():
  rng = np.random.default_rng(2)
  uniform = np.packbits(rng.random((5000, 64)) > 0.5, 1)  # neighbours far: probing would cost
  index = mih.MultiIndex.build(uniform, 64)
  calls = []

  def linear(query, topk):
    calls.append(len(query))
    return hamming_topk(query, uniform, topk)

  dist, ids, fallbacks = index.search(uniform[:40] ^ 1, 20, linear)
  want_dist, want_ids = hamming_topk(uniform[:40] ^ 1, uniform, 20)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(dist, want_dist)
  assert fallbacks == 40 and calls == [40]  # one batched scan; the rest skipped probing


def test_tables_round_trip_through_arrays():
  db, queries = _learned_like(100, 10, 64, 0.02, 3)
  index = mih.MultiIndex.build(db, 64, m=4)
  again = mih.MultiIndex.from_arrays(index.arrays(), 64)
  assert again.bounds == index.bounds
  got = again.search(queries, 5, _linear(db), max_work=1.0)
  want = index.search(queries, 5, _linear(db), max_work=1.0)
  np.testing.assert_array_equal(got[1], want[1])


def test_a_bad_substring_count_is_one_line():
  with pytest.raises(ValueError, match=r'm=2 substrings of 64 bits: accepted m in 3\.\.64'):
    mih.MultiIndex.build(np.zeros((4, 8), np.uint8), 64, m=2)
