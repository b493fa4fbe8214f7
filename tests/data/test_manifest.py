"""Tests for hashjax/data/manifest.py: a run records the files of its `folder:`/`list:` data
set, and resuming, serving, searching and updating refuse (one line) when they changed."""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image
from sklearn import datasets

from configs import hashnet_digits
from hashjax.commands import search
from hashjax.data import manifest
from hashjax.hashing import run as hash_trainer
from hashjax.runtime.errors import DataError
from hashjax.runtime.settings import override
from hashjax.serve import service

# --- the record and the comparison -----------------------------------------------------------


def _write_pngs(root, classes=3, per_class=12):
  digits = datasets.load_digits()
  for c in range(classes):
    (root / f'class{c}').mkdir(parents=True)
    for i, image in enumerate(digits.images[digits.target == c][:per_class]):
      pixels = (image * 255 / 16).astype(np.uint8)
      Image.fromarray(pixels).convert('RGB').save(root / f'class{c}' / f'{i:02d}.png')
  return root


def test_files_of_lists_folder_list_and_label_table(tmp_path):
  root = _write_pngs(tmp_path / 'images', classes=2, per_class=2)
  (root / 'notes.txt').write_text('not an image')
  found = manifest.files_of(f'folder:{root}')
  assert sorted(found) == ['class0/00.png', 'class0/01.png', 'class1/00.png', 'class1/01.png']
  assert found['class1/01.png'] == os.path.getsize(root / 'class1' / '01.png')
  assert manifest.files_of(f'mosaic:folder:{root}') == found
  table = tmp_path / 'labels.csv'
  table.write_text('file,hair\nclass0/00.png,red\n')
  assert manifest.files_of(f'folder:{root}', str(table))['<labels>'] == len(table.read_bytes())
  listing = root / 'list.txt'
  listing.write_text('class0/00.png 1 0\n# a comment\nclass1/01.png 0 1\n')
  assert manifest.files_of(f'list:{listing}') == {
      'list.txt': len(listing.read_bytes()), 'class0/00.png': found['class0/00.png'],
      'class1/01.png': found['class1/01.png']}
  for spec in ('digits', 'npz:x.npz', 'tfds:mnist', f'folder:{tmp_path}/missing'):
    assert manifest.files_of(spec) is None


def test_difference_names_what_is_gone_new_and_resized():
  before = {f'{i}.png': 100 for i in range(6)}
  now = {k: v for k, v in before.items() if k not in ('0.png', '1.png', '2.png', '3.png')}
  now.update({'new.png': 5, '5.png': 101})
  assert manifest.difference(before, before) is None
  assert manifest.difference(before, now) == (
      "6 files recorded, now: 4 gone ('0.png', '1.png', '2.png', ...); 1 new ('new.png'); "
      "1 of another size ('5.png')")


def test_check_or_record_writes_fresh_and_checks_resumed(tmp_path):
  root = _write_pngs(tmp_path / 'images', classes=2, per_class=2)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  spec = f'folder:{root}'
  manifest.check_or_record(str(workdir), spec, resuming=True, write=True)
  assert not (workdir / 'data.json').exists()  # a run from before the record: no check
  manifest.check_or_record(str(workdir), spec, resuming=False, write=True)
  recorded = json.loads((workdir / 'data.json').read_text())
  assert recorded['dataset'] == spec and recorded['num_files'] == 4
  (root / 'class0' / '01.png').unlink()
  with pytest.raises(DataError, match=r"^folder:.* changed since the run in .* read it \(4 "
                     r"files recorded, now: 1 gone \('class0/01.png'\)\); its items are "
                     r'numbered by these files, so it cannot resume: put the files back'):
    manifest.check_or_record(str(workdir), spec, resuming=True, write=True)
  (workdir / 'data.json').write_text('{"files": [1, 2')  # damaged: checks nothing
  manifest.check(str(workdir), spec, 'resume')


def test_a_copied_folder_with_new_times_is_the_same_data(tmp_path):
  root = _write_pngs(tmp_path / 'images', classes=2, per_class=2)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  manifest.record(str(workdir), f'folder:{root}', manifest.files_of(f'folder:{root}'))
  copy = tmp_path / 'copy'
  shutil.copytree(root, copy, copy_function=shutil.copyfile)  # new modification times
  manifest.check(str(workdir), f'folder:{copy}', 'serve')


# --- a run on a folder, then the folder changes ----------------------------------------------


@pytest.fixture(scope='module')
def folder_run(tmp_path_factory):
  """(the data folder, a finished 10-step HashNet run on it)."""
  base = tmp_path_factory.mktemp('folder_run')
  root = _write_pngs(base / 'images')
  cfg = override(hashnet_digits.get_config(), {
      'dataset': f'folder:{root}', 'image_size': 8, 'bits': 16, 'batch_size': 16,
      'num_steps': 10, 'split.query_per_class': 3, 'split.train_per_class': 6,
      'eval_every': 100000, 'log_every': 5, 'checkpoint_every': 10})
  hash_trainer.train_and_evaluate(cfg, str(base / 'run'))
  return root, str(base / 'run')


def _changed_copy(folder_run, tmp_path, change):
  """A copy of the run whose config names a copy of its folder, changed by `change`."""
  root, run = folder_run
  images, workdir = tmp_path / 'images', tmp_path / 'run'
  shutil.copytree(root, images)
  shutil.copytree(run, workdir)
  config = json.loads((workdir / 'config.json').read_text())
  config['dataset'] = f'folder:{images}'
  (workdir / 'config.json').write_text(json.dumps(config))
  change(images)
  return str(workdir), config


def _delete_one(images):
  (images / 'class1' / '04.png').unlink()


def _add_one(images):
  shutil.copyfile(images / 'class2' / '00.png', images / 'class0' / 'zz.png')


def test_the_run_records_every_file_it_read(folder_run):
  root, run = folder_run
  with open(os.path.join(run, 'data.json')) as f:
    assert json.load(f)['files'] == manifest.files_of(f'folder:{root}')
  assert len(manifest.recorded(run)) == 36


@pytest.mark.parametrize('change, what', [
    (_delete_one, r"1 gone \('class1/04.png'\)"), (_add_one, r"1 new \('class0/zz.png'\)")])
def test_a_changed_folder_is_one_line_to_serve_search_update_and_resume(
    folder_run, tmp_path, capsys, change, what):
  workdir, config = _changed_copy(folder_run, tmp_path, change)
  with pytest.raises(DataError, match=f'changed since the run in .*{what}.*cannot be served'):
    service.store_layout(workdir)
  assert search.main([f'--workdir={workdir}', '--query_index=0', f'--out={tmp_path}/g.png']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'cannot draw its neighbours' in err[0]
  assert not (tmp_path / 'g.png').exists()
  updating = override(ml_collections.ConfigDict(config), {
      'updating.from_workdir': workdir, 'updating.prior': 'none', 'num_steps': 12})
  with pytest.raises(DataError, match=f'{what}.*cannot be updated'):
    hash_trainer.train_and_evaluate(updating, str(tmp_path / 'update'))
  resumed = override(ml_collections.ConfigDict(config), {'num_steps': 12})
  with pytest.raises(DataError, match=f'{what}.*cannot resume'):
    hash_trainer.train_and_evaluate(resumed, workdir)
  assert not os.path.exists(os.path.join(workdir, 'checkpoints', '12'))


def test_an_unchanged_folder_serves_and_searches_with_pictures(folder_run, tmp_path, capsys):
  workdir, _ = _changed_copy(folder_run, tmp_path, lambda images: None)
  assert service.store_layout(workdir).image_shape == (8, 8, 3)
  assert search.main([f'--workdir={workdir}', '--query_index=0', '--topk=3',
                      f'--out={tmp_path}/g.png']) == 0, capsys.readouterr().err
  assert Image.open(tmp_path / 'g.png').size[0] > 0
