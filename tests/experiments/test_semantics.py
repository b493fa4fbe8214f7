"""Tests for hashjax/experiments/semantics.py and semantics_report.py: cells as overrides of
configs/hashnet_mnist.py, the units, one tiny end-to-end run through `main` (results,
pictures, page, resume), the claims and the flags. No test reads ../shared/data."""

import json
import os

import numpy as np
import pytest

from hashjax.experiments import hashing_cell
from hashjax.experiments import semantics as sem
from hashjax.experiments import semantics_report as sr
from hashjax.hashing import job as hash_trainer


def test_cells_are_the_config_file_with_overrides():
  mnist, mosaics = sem.grid_settings('full', 'x.npz')
  views = sem.cell_config(mnist, 'views', 32, 1)
  assert (views.dataset, views.loss.similarity, views.loss.weighting) == (
      'npz:x.npz', 'views', 'balanced')
  assert (views.bits, views.seed, views.num_steps, views.batch_size, views.map_topk) == (
      32, 1, 300, 64, 1000)
  assert sem.cell_config(mnist, 'views_no_weighting', 32, 0).loss.weighting == 'none'
  assert sem.cell_config(mnist, 'supervised', 32, 0).loss.similarity == 'hard'
  # A shallow method is fitted on the split of the data set's first deep method.
  assert sem.cell_config(mnist, 'itq', 64, 2) == sem.cell_config(mnist, 'views', 64, 2)
  soft = sem.cell_config(mosaics, 'soft', 64, 0)
  assert (soft.dataset, soft.loss.similarity, soft.num_steps) == ('mosaic:npz:x.npz', 'soft',
                                                                  200)
  assert (soft.split.num_query, soft.split.num_train, soft.split.query_per_class) == (
      1000, 5000, None)
  assert sem.cell_config(mosaics, 'hard', 64, 0).loss.similarity == 'hard'


def test_units_and_plans():
  full = sem.grid_settings('full', 'x.npz')
  keys = sem.units(full)
  assert len(keys) == 6 * 2 * 3 + 3 * 2 * 3
  assert keys[:6] == [('mnist', m, 32, 0) for m in ('chance', 'lsh', 'itq', 'views',
                                                    'views_no_weighting', 'supervised')]
  assert keys[-1] == ('mosaics', 'soft', 64, 2)
  quick = sem.grid_settings('quick', 'x.npz')
  assert [(s.overrides['num_steps'], s.bits, s.seeds) for s in quick] == [
      (30, (64,), (0,)), (20, (64,), (0,))]
  with pytest.raises(ValueError, match="unknown plan 'huge'; accepted: full, quick"):
    sem.grid_settings('huge', 'x.npz')
  # Every method has a label on the page.
  assert {m for s in full for m in s.methods} == set(sr.LABELS)


def tiny_settings(path):
  small = {'num_steps': 3, 'batch_size': 8, 'eval_batch_size': 64}
  return [
      sem.DataSettings('mnist', {**small, 'dataset': f'npz:{path}', 'split.query_per_class': 2,
                                 'split.train_per_class': 7},
                       methods=('chance', 'itq', 'views'), metrics=('copies', 'neighbours'),
                       bits=(sem.PICTURE_BITS,), seeds=(0,)),
      sem.DataSettings('mosaics', {**small, 'dataset': f'mosaic:npz:{path}',
                                   'split.query_per_class': None, 'split.num_query': 20,
                                   'split.train_per_class': None, 'split.num_train': 50},
                       methods=('soft',), metrics=('ndcg',), extra_topk=10,
                       bits=(sem.PICTURE_BITS,), seeds=(0,)),
  ]


@pytest.mark.slow
def test_tiny_grid_through_main_writes_results_pictures_and_page(tmp_path, monkeypatch, capsys,
                                                                 tiny_npz):
  settings = tiny_settings(tiny_npz)
  monkeypatch.setattr(sem, 'grid_settings', lambda plan, mnist: settings)
  flags = [f'--mnist={tiny_npz}', f'--workdir={tmp_path}/units', f'--out={tmp_path}/out']
  assert sem.main(flags) == 0
  results = json.loads((tmp_path / 'out' / 'results.json').read_text())
  chance, itq, views, soft = results['cells']
  assert [(c['data'], c['method']) for c in results['cells']] == [
      ('mnist', 'chance'), ('mnist', 'itq'), ('mnist', 'views'), ('mosaics', 'soft')]
  # Chance ties every item: the expected reciprocal rank of one item among M is H_M / M.
  cfg = sem.cell_config(settings[0], 'chance', sem.PICTURE_BITS, 0)
  source, split = hash_trainer.load_data(cfg)
  m = len(split.database) + len(split.query)
  assert chance['copy_map@all_expected'] == pytest.approx(np.sum(1 / np.arange(1, m + 1)) / m)
  assert chance['copy_recall@10_expected'] == pytest.approx(10 / m)
  assert 'mnist_chance' not in results['pictures']
  for cell in (itq, views):
    assert 0 < cell['copy_map@all'] <= 1 and 0 <= cell['neighbour_map@1000'] <= 1
    assert cell['neighbour_topk'] == 3 and 0 <= cell['copy_recall@1'] <= 1
  assert 0 < soft['ndcg@10'] <= 1 and soft['ndcg@10_interval'][0] <= soft['ndcg@10_interval'][1]
  # The class mAP is the shallow grid's own score of the same codes.
  assert itq['map'] == hashing_cell.shallow('itq', source, split, cfg.bits, 0,
                                            cfg.map_topk)['map']
  for name, shown in results['pictures'].items():
    assert (tmp_path / 'out' / f'{name}.png').stat().st_size > 5000
    distances = np.array(shown['distances'])
    assert distances.shape == (sem.PICTURE_ROWS, sem.PICTURE_TOPK)
    assert (np.diff(distances, axis=1) >= 0).all()
  # mnist's pictures search copies among the database plus the originals.
  items = np.array(results['pictures']['mnist_views']['items'])
  assert np.isin(items, np.concatenate([split.database, split.query])).all()
  text = (tmp_path / 'SEMANTICS.md').read_text()
  assert '## The claims' in text and '| HashNet, label-free (views) | 64 | 1 |' in text
  assert '![mosaics HashNet, soft similarity (Jaccard)](out/mosaics_soft.png)' in text
  assert 'mnist views 64 0: map' in capsys.readouterr().out
  # Resumed: every unit is saved, so nothing runs; the same cells, a second session.
  assert sem.main(flags + ['--resume']) == 0
  assert ': map' not in capsys.readouterr().out
  resumed = json.loads((tmp_path / 'out' / 'results.json').read_text())
  assert resumed['cells'] == results['cells'] and len(resumed['sessions']) == 2
  # The training pairs' similar fractions: equal for class ids, the Jaccard mean below.
  mnist, mosaics = (r['similar'] for r in results['settings'])
  assert mnist['hard'] == pytest.approx(mnist['soft']) and 0.05 < mnist['hard'] < 0.15
  assert 0 < mosaics['soft'] < mosaics['hard'] <= 1


def _cells(data, method, key, values, bits=32):
  return [{'data': data, 'method': method, 'bits': bits, 'seed': s, key: v, 'map': 0.5}
          for s, v in enumerate(values)]


def test_claims_compare_seed_means_and_name_the_differences():
  cells = (_cells('mnist', 'views', 'copy_map@all', [0.30, 0.34]) +
           _cells('mnist', 'itq', 'copy_map@all', [0.20, 0.36]) +
           _cells('mnist', 'lsh', 'copy_map@all', [0.10, 0.12]) +
           _cells('mnist', 'views_no_weighting', 'copy_map@all', [0.31, 0.35]) +
           _cells('mosaics', 'soft', 'ndcg@100', [0.5, 0.6]) +
           _cells('mosaics', 'hard', 'ndcg@100', [0.45, 0.58]))
  copies, weighting, soft = sr.check_claims(cells)
  assert copies['held'] and copies['evidence'] == [
      '32 bits: label-free HashNet 0.3200 ± 0.0200 vs ITQ 0.2800 ± 0.0800 (ITQ 0.2800 ± '
      '0.0800, LSH 0.1100 ± 0.0100) → yes']
  assert not weighting['held']
  assert weighting['evidence'][0].endswith(
      'difference per seed -0.0100, -0.0100 (mean -0.0100) → NO')
  assert soft['held'] and '(mean +0.0350) → yes' in soft['evidence'][0]
  # A baseline ahead on the mean fails the claim; missing cells test nothing.
  worse = [c for c in cells if c['method'] != 'itq'] + _cells('mnist', 'itq', 'copy_map@all',
                                                              [0.4, 0.4])
  assert not sr.check_claims(worse)[0]['held']
  assert [c['evidence'] for c in sr.check_claims([])] == [[], [], []]


@pytest.mark.parametrize('flags,message', [
    ([], '--mnist=PATH (an npz of the MNIST test set) is needed'),
    (['--mnist=/nonexistent/m.npz'], "--mnist=/nonexistent/m.npz: npz file "
                                     "'/nonexistent/m.npz' does not exist"),
    (['--workers=0'], '--workers=0; accepted: an integer >= 1'),
    (['--plan=huge'], "argument --plan: invalid choice: 'huge'"),
])
def test_bad_flags_are_one_line_errors(capsys, flags, message):
  with pytest.raises(SystemExit) as e:
    sem.main(flags + ['--out', '/nonexistent/never-written'])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f'semantics: error: {message}') and err.count('\n') == 1


def test_render_only_needs_results(tmp_path, capsys):
  assert sem.main(['--render_only', f'--out={tmp_path}']) == 2
  assert capsys.readouterr().err == (f'semantics: error: --render_only: '
                                     f'{tmp_path}/results.json does not exist\n')
  assert not os.path.exists(tmp_path / 'SEMANTICS.md')
