"""Tests for hashjax/experiments/hashnet_ablation.py: cells as overrides of configs/, the grid's
units, one tiny end-to-end run through `main` (results, page, resume), and its flags. No test
reads ../shared/data."""

import json
import os

import numpy as np
import pytest

from configs import hashnet_digits, hashnet_mnist
from hashjax.experiments import grid, hashnet_claims
from hashjax.experiments import hashnet_ablation as ha
from hashjax.runtime.errors import ConfigError


def test_cells_are_the_config_files_with_overrides():
  digits, mnist, pairs = ha.grid_settings('full', 'x.npz')
  base = hashnet_mnist.get_config()
  cell = ha.cell_config(mnist, 'hashnet', 16, 0)
  assert cell.dataset == 'npz:x.npz' and cell.loss.weighting == 'balanced'
  # Not overridden: as in configs/hashnet_mnist.py.
  assert (cell.split.query_per_class, cell.map_topk, cell.weight_decay) == (
      base.split.query_per_class, base.map_topk, base.weight_decay)
  assert (cell.batch_size, cell.num_steps, cell.lr_decay_every) == (64, 300, 150)
  assert cell.beta.gamma == pytest.approx(24 / 300) and cell.beta.step_size == 30
  pair_cell = ha.cell_config(pairs, 'hashnet', 48, 1)
  assert pair_cell.dataset == 'pairs:npz:x.npz' and pair_cell.seed == 1
  assert (pair_cell.split.num_query, pair_cell.split.query_per_class) == (1000, None)
  assert ha.cell_config(digits, 'hashnet', 16, 0).split.query_per_class == (
      hashnet_digits.get_config().split.query_per_class)
  assert ha.cell_config(digits, 'hashnet_no_weighting', 16, 0).loss.weighting == 'none'
  assert ha.cell_config(digits, 'hashnet_no_continuation', 16, 0).beta.schedule == 'constant'
  dhn = ha.cell_config(digits, 'dhn', 48, 1)
  assert (dhn.loss.name, dhn.beta.schedule, dhn.bits, dhn.seed) == ('dhn', 'constant', 48, 1)


def test_an_override_of_no_config_field_is_an_error():
  bad = ha.DataSettings('digits', 'hashnet_digits', {'num_steps': 3, 'split.query_per_klass': 5})
  with pytest.raises(ConfigError, match=r'override split.query_per_klass=5 names no field'):
    ha.cell_config(bad, 'hashnet', 16, 0)
  bad = ha.DataSettings('digits', 'hashnet_digits', {'bits.low': 5})
  with pytest.raises(ConfigError, match=r'override bits.low=5 names no field'):
    ha.cell_config(bad, 'hashnet', 16, 0)


def test_plans_and_units():
  cpu = {s.name: s for s in ha.grid_settings('cpu', 'x.npz')}
  assert cpu['mnist'].cells() == [(0, 16), (0, 32), (0, 48), (0, 64), (1, 48), (2, 48)]
  units = ha.units([cpu['mnist']])
  assert units[:6] == [('mnist', m, 16, 0) for m in ('lsh', 'itq') + tuple(ha.METHODS)]
  assert units[-3:] == [('mnist', 'lsh', 48, 2), ('mnist', 'itq', 48, 2),
                        ('mnist', 'hashnet', 48, 2)]
  assert len(ha.units(ha.grid_settings('full', 'x.npz'))) == 3 * 4 * 3 * 6
  quick = ha.grid_settings('quick')
  assert [s.overrides['num_steps'] for s in quick] == [30, 30, 20]
  assert quick[1].overrides['dataset'] == 'npz:'  # no --mnist: fails if run
  with pytest.raises(ValueError, match='unknown plan'):
    ha.grid_settings('huge')
  # Every method of the grid has a label (and so a style) on the page.
  assert set(hashnet_claims.LABELS) == {*ha.METHODS, ha.CONTINUOUS, *ha.SHALLOW}


TINY = ha.DataSettings('digits', 'hashnet_digits', {
    'num_steps': 4, 'batch_size': 16, 'split.query_per_class': 5,
    'split.train_per_class': 20}, methods=('hashnet',), bits=(ha.LOSS_CURVE_BITS,),
    seeds=(0,), loss_every=2)


def test_tiny_grid_through_main_writes_results_and_page_and_resumes(tmp_path, monkeypatch,
                                                                   capsys):
  monkeypatch.setattr(ha, 'grid_settings', lambda plan, mnist: [TINY])
  flags = [f'--workdir={tmp_path}/units', f'--out={tmp_path}/results', '--data=digits']
  assert ha.main(flags) == 0
  results = json.loads((tmp_path / 'results' / 'results.json').read_text())
  assert [c['method'] for c in results['cells']] == ['lsh', 'itq', 'hashnet', ha.CONTINUOUS]
  assert all(0.0 <= c['map'] <= 1.0 for c in results['cells'])
  assert [r['step'] for r in results['curves']['digits']['hashnet']] == [0, 2, 4]
  (record,) = results['settings']
  assert record['cell']['num_steps'] == 4 and 0.05 < record['similar_fraction'] < 0.15
  assert sorted(os.listdir(tmp_path / 'units')) == [
      'digits-hashnet-48-0.json', 'digits-itq-48-0.json', 'digits-lsh-48-0.json']
  text = (tmp_path / 'RESULTS.md').read_text()
  assert '## The claims' in text and '| HashNet |' in text and '--data=digits' in text
  for name in ('map_vs_bits.png', 'pr_48bits.png'):
    assert (tmp_path / 'results' / name).stat().st_size > 1000
  out = capsys.readouterr().out
  assert 'digits hashnet 48 bits seed 0: mAP' in out
  # Resumed: every unit is saved, so nothing runs; the same cells, a second session.
  assert ha.main(flags + ['--resume']) == 0
  assert 'mAP' not in capsys.readouterr().out
  resumed = json.loads((tmp_path / 'results' / 'results.json').read_text())
  assert resumed['cells'] == results['cells'] and len(resumed['sessions']) == 2
  assert resumed['sessions'][1]['cells'] == 0


def test_a_failing_unit_is_named(tmp_path, monkeypatch, capsys):
  broken = ha.DataSettings('digits', 'hashnet_mnist', {'dataset': 'npz:/nonexistent/x.npz'},
                           methods=('hashnet',), bits=(16, 32), seeds=(0,))
  with pytest.raises(grid.GridError, match=r'unit digits-lsh-16-0 failed: DataError: .*x\.npz'):
    grid.run(ha.units([broken]), lambda key: ha.run_unit({'digits': broken}, key),
             str(tmp_path))
  # Through main: data that cannot be opened stops the run before any unit (exit code 2); a
  # unit that fails is named (exit code 1).
  monkeypatch.setattr(ha, 'grid_settings', lambda plan, mnist: [broken])
  flags = [f'--workdir={tmp_path}', f'--out={tmp_path}/r', '--data=digits']
  assert ha.main(flags) == 2
  assert capsys.readouterr().err == (
      "hashnet_ablation: error: npz file '/nonexistent/x.npz' does not exist\n")
  monkeypatch.setattr(ha, 'grid_settings', lambda plan, mnist: [TINY])

  def run_unit(settings_by_name, key):
    if key[1] == 'itq':
      raise ValueError('no rotation')
    return {'cells': [], 'curve': None}
  monkeypatch.setattr(ha, 'run_unit', run_unit)
  assert ha.main(flags) == 1
  assert capsys.readouterr().err == (
      'hashnet_ablation: error: unit digits-itq-48-0 failed: ValueError: no rotation '
      f'(finished units are saved in {tmp_path}; rerun with --resume)\n')


@pytest.mark.parametrize('flags,message', [
    (['--workers=0'], '--workers=0; accepted: an integer >= 1'),
    ([], '--mnist=PATH (an npz of the MNIST test set) is needed for mnist, mnist_pairs100; '
         'or pass --data=digits'),
    (['--data=mnist'], '--mnist=PATH (an npz of the MNIST test set) is needed'),
    (['--mnist=/nonexistent/m.npz'], "--mnist=/nonexistent/m.npz: npz file "
                                     "'/nonexistent/m.npz' does not exist"),
    (['--data=digits,cifar'], "--data names 'cifar'; accepted: digits, mnist, mnist_pairs100"),
    (['--plan=huge'], "argument --plan: invalid choice: 'huge'"),
])
def test_bad_flags_are_one_line_errors(capsys, flags, message):
  with pytest.raises(SystemExit) as e:
    ha.main(flags + ['--out', '/nonexistent/never-written'])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f'hashnet_ablation: error: {message}') and err.count('\n') == 1


def test_mnist_flag_takes_an_npz(tmp_path, capsys):
  path = tmp_path / 'm.npz'
  np.savez(path, image=np.zeros((20, 28, 28), np.uint8), label=np.arange(20) % 10)
  args = ha._parse([f'--mnist={path}', '--quick'])
  assert (args.mnist, args.plan, args.data) == (str(path), 'quick', ['digits', *ha.MNIST_SETS])
  np.savez(path, image=np.zeros((20, 28, 28), np.float32), label=np.arange(20) % 10)
  with pytest.raises(SystemExit):
    ha._parse([f'--mnist={path}'])
  assert capsys.readouterr().err.startswith(
      f"hashnet_ablation: error: --mnist={path}: '{path}': image must be uint8")


def test_render_only_needs_results(tmp_path, capsys):
  assert ha.main(['--render_only', f'--out={tmp_path}']) == 2
  assert capsys.readouterr().err == (f'hashnet_ablation: error: --render_only: '
                                     f'{tmp_path}/results.json does not exist\n')
