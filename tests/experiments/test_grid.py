"""Tests for hashjax/experiments/grid.py: units in one process or two, per-unit files, resume,
a failing unit named in one line, and the shared flags."""

import json
import os

import pytest

from hashjax.experiments import grid

UNITS = [('a', i) for i in range(5)]


def _square(key):
  """Module level, so worker processes can import it."""
  return {'value': key[1] ** 2, 'pid': os.getpid(), 'xla_flags': os.environ.get('XLA_FLAGS', '')}


def _fail_on_three(key):
  if key[1] == 3:
    raise ValueError('three is\nbad')
  return {'value': key[1]}


def test_two_workers_give_what_one_gives_and_save_every_unit(tmp_path):
  seen = []
  one = grid.run(UNITS, _square, str(tmp_path / 'one'))
  two = grid.run(UNITS, _square, str(tmp_path / 'two'), workers=2,
                 progress=lambda key, result: seen.append(key))
  assert list(one) == list(two) == UNITS  # the order of the units, whoever finished first
  assert [r['value'] for r in two.values()] == [0, 1, 4, 9, 16]
  assert [r['value'] for r in one.values()] == [0, 1, 4, 9, 16]
  assert sorted(seen) == UNITS
  assert {r['pid'] for r in one.values()} == {os.getpid()}
  assert os.getpid() not in {r['pid'] for r in two.values()}
  assert all(grid.SINGLE_THREADED_XLA in r['xla_flags'] for r in two.values())
  assert grid.SINGLE_THREADED_XLA not in os.environ.get('XLA_FLAGS', '')  # restored here
  saved = json.loads((tmp_path / 'two' / 'a-3.json').read_text())
  assert saved['unit'] == ['a', 3] and saved['result'] == two[('a', 3)]


def test_resume_runs_only_the_units_not_saved(tmp_path):
  calls = []

  def count(key):
    calls.append(key)
    return {'value': key[1], 'run': len(calls)}

  first = grid.run(UNITS[:2], count, str(tmp_path))
  resumed = grid.run(UNITS, count, str(tmp_path), resume=True)
  assert calls == UNITS  # the first two in the first run, the other three after
  assert [resumed[k] for k in UNITS[:2]] == list(first.values())  # read back, not rerun
  grid.run(UNITS, count, str(tmp_path))  # without resume every unit runs again
  assert calls[5:] == UNITS
  # A file holding another unit (e.g. another grid's) is not taken for this one.
  (tmp_path / 'a-0.json').write_text(json.dumps({'unit': ['b', 0], 'result': {}}))
  assert grid.saved_results(str(tmp_path), UNITS[:1]) == {}
  (tmp_path / 'a-0.json').write_text('{"unit": ')
  with pytest.raises(grid.GridError, match=r'unit file .*a-0.json is unreadable .* delete it'):
    grid.run(UNITS, count, str(tmp_path), resume=True)


@pytest.mark.parametrize('workers', [1, 2])
def test_a_failing_unit_is_named_in_one_line(tmp_path, workers):
  with pytest.raises(grid.GridError) as e:
    grid.run(UNITS, _fail_on_three, str(tmp_path), workers=workers)
  message = str(e.value)
  assert message.startswith('unit a-3 failed: ValueError: three is bad (finished units are '
                            f'saved in {tmp_path}; rerun with --resume)')
  assert '\n' not in message
  if workers == 1:  # the units before it are saved, not those after
    assert sorted(os.listdir(tmp_path)) == ['a-0.json', 'a-1.json', 'a-2.json']


@pytest.mark.parametrize('units,match', [
    ([('a', 1), ('a', 1)], r"units \('a', 1\) and \('a', 1\) share the file name a-1.json"),
    ([('a b', 1), ('a_b', 1)], 'share the file name a_b-1.json'),
    ([('a', [1])], 'is not a JSON-able key'),
    ([frozenset({1})], 'is not a JSON-able key'),
])
def test_bad_units(tmp_path, units, match):
  with pytest.raises(ValueError, match=match):
    grid.run(units, _square, str(tmp_path))


def test_unit_names():
  assert grid.unit_name(('mnist', 'hashnet', 48, 0)) == 'mnist-hashnet-48-0'
  assert grid.unit_name('lr=0.1') == 'lr=0.1'
  assert grid.unit_name(('a/b', None, 1.5)) == 'a_b-None-1.5'


@pytest.mark.parametrize('workers', [0, -1])
def test_bad_worker_count(tmp_path, capsys, workers):
  with pytest.raises(ValueError, match=f'workers={workers}; accepted: an integer >= 1'):
    grid.run(UNITS, _square, str(tmp_path), workers=workers)
  parser = grid.argument_parser('prog', 'test', workdir='runs/x')
  args = parser.parse_args([f'--workers={workers}'])
  with pytest.raises(SystemExit) as e:
    grid.check_arguments(parser, args)
  assert e.value.code == 2
  assert capsys.readouterr().err == f'prog: error: --workers={workers}; accepted: an integer >= 1\n'


def test_flags_and_a_bad_flag_in_one_line(capsys):
  parser = grid.argument_parser('prog', 'test', workdir='runs/x')
  args = parser.parse_args(['--workers=2', '--resume'])
  assert (args.workers, args.resume, args.workdir) == (2, True, 'runs/x')
  with pytest.raises(SystemExit) as e:
    parser.parse_args(['--workers=two'])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('prog: error: argument --workers: invalid int value')
  assert err.count('\n') == 1
