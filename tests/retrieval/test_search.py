import os
import subprocess
import sys

import numpy as np
import pytest

from hashjax import HammingIndex, hamming_topk, pack_codes
from hashjax.runtime import errors
from tests import ROOT


def _codes(seed, n, bits):
  return np.where(np.random.default_rng(seed).random((n, bits)) > 0.5, 1, -1)


@pytest.mark.parametrize('bits,n,topk', [(4, 200, 1), (4, 200, 150), (13, 500, 37),
                                         (64, 3000, 100), (260, 300, 300)])
def test_hamming_topk_matches_stable_argsort(bits, n, topk):
  q, db = _codes(0, 21, bits), _codes(1, n, bits)
  dist, idx = hamming_topk(pack_codes(q), pack_codes(db), topk=topk, chunk_size=8)
  brute = (q[:, None, :] != db[None, :, :]).sum(-1)
  order = np.argsort(brute, axis=1, kind='stable')[:, :topk]  # ties by index
  np.testing.assert_array_equal(idx, order)
  np.testing.assert_array_equal(dist, np.take_along_axis(brute, order, axis=1))
  assert dist.dtype == np.int32 and idx.dtype == np.int64


def test_hamming_topk_bad_topk():
  with pytest.raises(errors.SearchError, match='topk=0'):
    hamming_topk(pack_codes(_codes(0, 2, 8)), pack_codes(_codes(1, 5, 8)), 0)
  with pytest.raises(errors.SearchError, match='topk=6'):
    hamming_topk(pack_codes(_codes(0, 2, 8)), pack_codes(_codes(1, 5, 8)), 6)
  with pytest.raises(TypeError, match="unexpected keyword argument 'k'"):
    hamming_topk(pack_codes(_codes(0, 2, 8)), pack_codes(_codes(1, 5, 8)), k=2)


_SHARDED = r'''
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import numpy as np, jax
assert len(jax.devices()) == 8
from hashjax.retrieval import search as search_lib
rng = np.random.default_rng(0)
qc = np.where(rng.random((37, 16)) > 0.5, 1, -1); dc = np.where(rng.random((1000, 16)) > 0.5, 1, -1)
d, i = search_lib.hamming_topk(np.packbits(qc > 0, 1), np.packbits(dc > 0, 1), 20, chunk_size=12)
print(json.dumps({"d": d.tolist(), "i": i.tolist()}))
'''


def test_sharded_over_8_cpu_devices_equals_unsharded():
  import json
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  out = subprocess.run([sys.executable, '-c', _SHARDED], capture_output=True, text=True,
                       env=env, cwd=ROOT, check=True)
  sharded = json.loads(out.stdout.strip().splitlines()[-1])
  rng = np.random.default_rng(0)
  qc = np.where(rng.random((37, 16)) > 0.5, 1, -1)
  dc = np.where(rng.random((1000, 16)) > 0.5, 1, -1)
  d, i = hamming_topk(np.packbits(qc > 0, 1), np.packbits(dc > 0, 1), 20, chunk_size=12)
  np.testing.assert_array_equal(sharded['d'], d)
  np.testing.assert_array_equal(sharded['i'], i)


def _write_codes_npz(path, n_db=60, n_query=5, bits=12):
  q, db = _codes(2, n_query, bits), _codes(3, n_db, bits)
  rng = np.random.default_rng(4)
  np.savez(path, db_codes=pack_codes(db), db_labels=rng.integers(0, 10, n_db),
           db_indices=np.arange(100, 100 + n_db), query_codes=pack_codes(q),
           query_labels=rng.integers(0, 10, n_query), query_indices=np.arange(n_query),
           bits=np.int64(bits), dataset=np.str_('digits'))
  return q, db


def test_index_save_load_round_trip(tmp_path):
  q, db = _write_codes_npz(tmp_path / 'codes.npz')
  index = HammingIndex.load(str(tmp_path / 'codes.npz'))
  assert index.bits == 12 and len(index) == 60 and str(index.extras['dataset']) == 'digits'
  index.save(str(tmp_path / 'again.npz'))
  original, again = np.load(tmp_path / 'codes.npz'), np.load(tmp_path / 'again.npz')
  assert sorted(original.files) == sorted(again.files)
  for name in original.files:
    np.testing.assert_array_equal(original[name], again[name])
  dist, idx = HammingIndex.load(str(tmp_path / 'again.npz')).search(pack_codes(q), topk=5)
  np.testing.assert_array_equal((dist, idx), hamming_topk(pack_codes(q), pack_codes(db), 5))
