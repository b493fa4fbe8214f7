import json

import numpy as np
import pytest

from hashjax.experiments import update as exp


def _row(**kw):
  """An arm's eval row; keyword map_<version>_<group> stands for the key map@1000_<...>."""
  base = {'map_reencoded_all': 0.5, 'map_reencoded_old': 0.5, 'map_reencoded_new': 0.5,
          'map_kept_all': 0.5, 'flip_rate': 0.1, 'items_flipped': 0.5,
          'database_bits_recomputed': 100, 'steps': 250, 'wall_s': 1.0, 'map_topk': 1000}
  return {k.replace('map_', 'map@1000_', 1) if k.startswith('map_') and k != 'map_topk' else k:
          v for k, v in {**base, **kw}.items()}


def _unit(seed_shift=0.0):
  s = seed_shift
  return {
      'base': {'map@1000': 0.99, 'map_topk': 1000}, 'no_update': _row(map_reencoded_old=0.95 + s, map_kept_all=0.70,
                                               steps=0),
      'retrain': _row(map_reencoded_all=0.98, steps=1000),
      'finetune': _row(map_reencoded_old=0.55 + s, map_reencoded_new=0.96),
      'l2': _row(map_reencoded_old=0.85 + s),
      'laplace': _row(map_reencoded_old=0.80 + s, map_reencoded_new=0.90),
      'laplace_keep': _row(map_kept_all=0.86),
  }


def test_summary_forgetting_and_acceptance_lines():
  units = {('class', 32, 0): _unit(0.0), ('class', 32, 1): _unit(0.02)}
  summary = exp.summarize(units)
  cell = summary['class-32']
  assert cell['finetune']['forgetting'][0] == pytest.approx(0.40)  # 0.95 − 0.55, both seeds
  assert cell['laplace']['forgetting'] == pytest.approx([0.15, 0.0, 2])
  assert cell['l2']['map@1000_reencoded_old'][0] == pytest.approx(np.mean([0.85, 0.87]))
  lines = exp.acceptance(summary)
  assert lines[0] == 'laplace forgetting 0.150 ≤ ½ × finetune 0.400: met'
  assert lines[1] == 'laplace new-class mAP 0.900 ≥ 0.9 × finetune 0.960: met'
  assert lines[2] == 'keep all-query mAP 0.860 ≥ 0.85 × retrain 0.980 (= 0.833): met'
  assert lines[3] == 'keep all-query mAP 0.860 ≥ no update 0.700 + 0.10: met'
  assert lines[4] == 'keep steps 25% of retraining ≤ 25%: met'
  worse = {('class', 32, 0): {**_unit(), 'laplace': _row(map_reencoded_old=0.70,
                                                         map_reencoded_new=0.5)}}
  lines = exp.acceptance(exp.summarize(worse))
  assert lines[0].endswith('NOT met') and lines[1].endswith('NOT met')
  assert exp.acceptance(summary, 'sample-16') == ['sample-16: not run']
  table = exp.table(summary)
  assert '| arm | map@1000_reencoded_all | map@1000_reencoded_old |' in table
  assert '| laplace | 0.500 ± 0.000 | 0.810 ± 0.010 |' in table
  # Rows written before the metric keys took the map@100 form give the same summary.
  old = {k: {arm: {(key.replace('map@1000_', 'map_') if key.startswith('map@1000_') else key): v
                   for key, v in row.items()} for arm, row in unit.items()}
         for k, unit in units.items()}
  assert exp.summarize(old) == summary


def test_configs_carry_the_protocol_and_the_stage():
  c = exp.make_config('m.npz', 'class', 32, 1, 'new', 250,
                      **{'updating.from_workdir': 'base', 'updating.prior': 'l2'})
  assert (c.dataset, c.bits, c.seed, c.num_steps, c.batch_size) == ('npz:m.npz', 32, 1, 250, 64)
  assert (c.split.new_classes, c.split.stage, c.updating.prior) == ('7,8,9', 'new', 'l2')
  c = exp.make_config('m.npz', 'sample', 16, 0, 'old', 1000, quick=True)
  assert (c.split.later_fraction, c.split.new_classes, c.split.query_per_class) == (0.5, None, 10)


def test_a_file_that_is_no_npz_is_one_line(capsys, tmp_path):
  assert exp.main([f'--mnist={__file__}', f'--workdir={tmp_path}', '--bits=16']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'is not a readable .npz file' in err[0]


@pytest.mark.parametrize('argv, match', [
    (['--mnist=/nonexistent.npz'], r'--mnist=/nonexistent.npz is not a file'),
    (['--mnist=x', '--protocols=class,task'], r'--protocols=class,task; accepted: class, sample'),
    (['--mnist=x', '--bits=16,x'], r"'16,x': comma-separated integers"),
])
def test_bad_flags_are_one_line(argv, match, capsys, tmp_path):
  if argv[0] == '--mnist=x':  # a file that exists
    argv = [f'--mnist={__file__}'] + argv[1:]
  with pytest.raises(SystemExit) as e:
    exp.main(argv + [f'--workdir={tmp_path}'])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(exp.PROG + ': error: ')
  import re  # pylint: disable=g-import-not-at-top
  assert re.search(match, err[0])


@pytest.mark.slow
def test_a_tiny_grid_through_main_writes_the_table_and_resumes(tmp_path, monkeypatch, capsys,
                                                              tiny_npz):
  """Every unit's runs (base, no update, retraining, each arm) and the λ selection, on 300
  digits at a few steps each: the table, the acceptance lines and a resume that runs nothing."""
  monkeypatch.setattr(exp, 'LAMBDAS', {'l2': (1.0, 10.0), 'laplace': (1e3,)})
  monkeypatch.setattr(exp, 'QUICK', {'base': 12, 'update': 6, 'query_per_class': 5,
                                     'train_per_class': 10})
  flags = [f'--mnist={tiny_npz}', '--quick', '--bits=16', '--seeds=0', '--protocols=class',
           f'--workdir={tmp_path}/units', f'--out={tmp_path}/out']
  assert exp.main(flags) == 0
  results = json.loads((tmp_path / 'out' / 'results.json').read_text())
  assert set(results['selection']['class-16']['chosen']) == {'l2', 'laplace'}
  arms = results['summary']['class-16']
  assert set(arms) == set(exp.ROWS)
  for arm in exp.ROWS:
    assert 0 <= arms[arm][exp._map('kept_all')][0] <= 1 and arms[arm]['steps'][2] == 1
  assert arms['no_update']['flip_rate'][0] == 0  # the base model's own codes
  table = (tmp_path / 'out' / 'update_table.md').read_text()
  assert '| laplace_keep |' in table and '- class-32: not run' in table  # the targets' group
  assert "('class', 16, 0) done" in capsys.readouterr().out
  assert exp.main(flags + ['--resume']) == 0
  assert 'done' not in capsys.readouterr().out.replace('λ chosen', '')
