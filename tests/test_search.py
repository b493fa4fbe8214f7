import os
import subprocess
import sys

import numpy as np
import pytest

from hashjax import HammingIndex, hamming_topk, pack_codes
from hashjax.commands import search
from hashjax.runtime import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_search_cli_prints_neighbours_and_writes_grid(tmp_path, capsys):
  _write_codes_npz(tmp_path / 'codes.npz')
  out = tmp_path / 'grid.png'
  assert search.main([f'--workdir={tmp_path}', '--query_index=2', '--topk=4',
                     f'--out={out}']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith('query 2 (label') and len(lines) == 2 + 4 + 1
  from PIL import Image
  assert Image.open(out).size[0] > 5 * 64


@pytest.mark.parametrize('args,message', [
    (['--workdir={missing}', '--query_index=0'], 'does not exist'),
    (['--workdir={empty}', '--query_index=0'], 'codes.npz does not exist'),
    (['--workdir={run}', '--query_index=5'], 'out of range 0..4'),
    (['--workdir={run}', '--query_index=0', '--topk=0'], '--topk=0 must be at least 1'),
    (['--workdir={run}', '--query_index=0', '--k=3'], 'unrecognized arguments: --k=3'),
    (['--workdir={run}'], 'required'),
])
def test_search_cli_errors_are_one_line(tmp_path, args, message):
  (tmp_path / 'run').mkdir()
  (tmp_path / 'empty').mkdir()
  _write_codes_npz(tmp_path / 'run' / 'codes.npz')
  args = [a.format(missing=tmp_path / 'nope', empty=tmp_path / 'empty', run=tmp_path / 'run')
          for a in args]
  result = subprocess.run([sys.executable, '-m', 'hashjax.commands.search', *args], cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.count('\n') == 1 and result.stderr.startswith('search: error: ')
  assert message in result.stderr and 'Traceback' not in result.stderr


def test_search_cli_truncated_codes_file_is_one_line(tmp_path, capsys):
  path = tmp_path / 'codes.npz'
  _write_codes_npz(path)
  path.write_bytes(path.read_bytes()[:200])
  assert search.main([f'--workdir={tmp_path}', '--query_index=0']) == 2
  out, err = capsys.readouterr()
  assert out == '' and err.count('\n') == 1 and 'Traceback' not in err
  assert err.startswith(f'search: error: {path} is not a readable codes.npz')


@pytest.mark.parametrize('trailing', ['', '/'])
def test_search_cli_out_directory_gets_a_default_name(tmp_path, capsys, trailing):
  _write_codes_npz(tmp_path / 'codes.npz')
  folder = tmp_path / 'grids'
  if not trailing:
    folder.mkdir()  # an existing folder; with a trailing '/' a new one is made
  assert search.main([f'--workdir={tmp_path}', '--query_index=2', '--topk=3',
                     f'--out={folder}{trailing}']) == 0
  out = capsys.readouterr().out
  assert out.splitlines()[-1] == f'wrote {folder / "query_2_top3.png"}'
  assert sorted(os.listdir(tmp_path)) == ['codes.npz', 'grids']  # no stray temporary file
  assert os.listdir(folder) == ['query_2_top3.png']
