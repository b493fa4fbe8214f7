"""The search command: neighbours printed, a PNG grid, and one-line errors."""

import os
import subprocess
import sys

import pytest

from hashjax.commands import search
from tests import ROOT
from tests.retrieval.test_search import _write_codes_npz


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
def test_search_cli_errors_are_one_line(tmp_path, args, message, capsys):
  (tmp_path / 'run').mkdir()
  (tmp_path / 'empty').mkdir()
  _write_codes_npz(tmp_path / 'run' / 'codes.npz')
  args = [a.format(missing=tmp_path / 'nope', empty=tmp_path / 'empty', run=tmp_path / 'run')
          for a in args]
  try:  # in this process; the shell's view: the test below
    code = search.main(args)
  except SystemExit as e:
    code = e.code
  assert code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('search: error: ')
  assert message in err and 'Traceback' not in err


def test_the_shell_sees_exit_2_and_one_line(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'hashjax.commands.search',
                           f'--workdir={tmp_path / "nope"}', '--query_index=0'], cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr == f"search: error: workdir '{tmp_path / 'nope'}' does not exist\n"


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
