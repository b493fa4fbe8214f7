import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import hashnet_digits
from hashjax.commands import fisher
from hashjax.hashing import job, priors, update
from hashjax.hashing import run as hash_trainer
from hashjax.hashing.config import hash_config
from hashjax.runtime.errors import ConfigError
from hashjax.runtime.settings import override
from tests import ROOT

TINY = {'bits': 16, 'batch_size': 32, 'split.query_per_class': 5, 'split.train_per_class': 20,
        'eval_every': 100000, 'log_every': 5, 'checkpoint_every': 10,
        'split.new_classes': '7,8,9'}


def _config(**overrides):
  return override(hashnet_digits.get_config(), {**TINY, **overrides})


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('base'))
  hash_trainer.train_and_evaluate(
      _config(num_steps=20, **{'split.stage': 'old', 'save_fisher': True}), workdir)
  return workdir


def _update(base_dir, **overrides):
  return _config(num_steps=10, **{'split.stage': 'new', 'updating.from_workdir': base_dir,
                                  **overrides})


def test_keep_leaves_every_indexed_code_and_encodes_only_new_items(base, tmp_path):
  cfg = _update(base, **{'updating.database_codes': 'keep', 'updating.code_anchor_weight': 1.0})
  row = hash_trainer.train_and_evaluate(cfg, str(tmp_path))
  with np.load(os.path.join(base, 'codes.npz')) as old, \
       np.load(tmp_path / 'codes.npz') as new:
    where = np.searchsorted(new['db_indices'], old['db_indices'])
    np.testing.assert_array_equal(new['db_codes'][where], old['db_codes'])
    num_new = len(new['db_indices']) - len(old['db_indices'])
  assert num_new > 0 and row['num_indexed'] == len(where)
  assert row['database_bits_recomputed'] == num_new * 16
  assert row['map@all'] == row['map@all_kept_all']
  assert {'map@all_kept_old', 'map@all_kept_new', 'map@all_reencoded_old',
          'map@all_reencoded_new'} <= set(row)


@pytest.fixture(scope='module')
def fine_tuned(base, tmp_path_factory):
  """eval.json of a plain fine-tuning update (no prior, no anchor): the reference of the
  prior and anchor tests."""
  return hash_trainer.train_and_evaluate(_update(base, **{'updating.prior': 'none'}),
                                         str(tmp_path_factory.mktemp('free')))


def test_a_strong_prior_flips_fewer_codes_than_fine_tuning(base, fine_tuned, tmp_path):
  free = fine_tuned
  held = hash_trainer.train_and_evaluate(
      _update(base, **{'updating.prior': 'l2', 'updating.prior_weight': 1e4}),
      str(tmp_path / 'held'))
  assert held['flip_rate'] < free['flip_rate']
  assert 0 <= held['items_flipped'] <= 1 and free['flip_rate'] > 0


VIEWS = {'loss.similarity': 'views', 'updating.database_codes': 'keep'}


@pytest.fixture(scope='module')
def views_held(base, tmp_path_factory):
  """A label-free update under an L2 prior and the code anchor: (workdir, eval.json)."""
  workdir = str(tmp_path_factory.mktemp('views_held'))
  return workdir, hash_trainer.train_and_evaluate(
      _update(base, **VIEWS, **{'updating.prior': 'l2', 'updating.prior_weight': 1e4,
                                'updating.code_anchor_weight': 1.0}), workdir)


def test_a_label_free_update_trains_on_views_with_its_prior_and_anchor(views_held):
  workdir, held = views_held
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert all(row['prior'] > 0 and row['anchor'] > 0 for row in rows[1:])
  assert held['map@all'] == held['map@all_kept_all'] and held['flip_rate'] < 0.5


@pytest.mark.slow
def test_on_views_the_prior_holds_the_indexed_codes(base, views_held, tmp_path):
  _, held = views_held
  free = hash_trainer.train_and_evaluate(_update(base, **VIEWS, **{'updating.prior': 'none'}),
                                         str(tmp_path / 'free'))
  assert held['flip_rate'] < free['flip_rate'] and free['flip_rate'] > 0


def test_the_code_anchor_keeps_indexed_items_near_their_stored_codes(base, fine_tuned,
                                                                      tmp_path):
  free = fine_tuned
  anchored = hash_trainer.train_and_evaluate(
      _update(base, **{'updating.prior': 'none', 'updating.code_anchor_weight': 10.0}),
      str(tmp_path / 'anchored'))
  assert anchored['flip_rate'] < free['flip_rate']
  assert anchored['map@all_kept_all'] > free['map@all_kept_all']


def test_the_fisher_command_writes_what_the_run_wrote(base, tmp_path):
  saved, step = priors.load_fisher(os.path.join(base, 'fisher.npz'),
                                   update.load_base(base, (8, 8, 1))[1].params)
  os.rename(os.path.join(base, 'fisher.npz'), tmp_path / 'kept.npz')
  try:
    assert fisher.main([f'--workdir={base}']) == 0  # the shell's view: the test below
    again, again_step = priors.load_fisher(os.path.join(base, 'fisher.npz'), saved)
  finally:
    os.replace(tmp_path / 'kept.npz', os.path.join(base, 'fisher.npz'))
  assert again_step == step == 20
  for a, b in zip(priors.jax.tree.leaves(saved), priors.jax.tree.leaves(again), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  zero = sum(int((x == 0).sum()) for x in priors.jax.tree.leaves(saved))
  assert zero < sum(x.size for x in priors.jax.tree.leaves(saved))


def test_the_fisher_command_usage_is_one_line():
  proc = subprocess.run([sys.executable, '-m', 'hashjax.commands.fisher', '--workdr=x'],
                        capture_output=True, text=True, cwd=ROOT, check=False, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'fisher: error: the following arguments are required: --workdir']


def test_update_errors_are_one_line(base, tmp_path):
  with pytest.raises(ConfigError, match=r'^bits=32 differs from the run in .* \(16\); an '
                     r'update keeps the model: use --config.bits=16$'):
    hash_trainer.train_and_evaluate(_update(base, bits=32), str(tmp_path / 'a'))
  with pytest.raises(ConfigError, match=r'config.json does not exist: updating.from_workdir='):
    hash_trainer.train_and_evaluate(_update(str(tmp_path)), str(tmp_path / 'b'))
  fisher = os.path.join(base, 'fisher.npz')
  os.rename(fisher, tmp_path / 'f.npz')
  try:
    with pytest.raises(ConfigError, match=r"needs .*fisher.npz; write it with: python -m "
                       r'hashjax.commands.fisher --workdir='):
      hash_trainer.train_and_evaluate(_update(base), str(tmp_path / 'c'))
  finally:
    os.replace(tmp_path / 'f.npz', fisher)


def _not_fisher(kind, good):
  """Bytes of a fisher.npz that is truncated, garbage, another file's or all NaN."""
  if kind == 'truncated':
    return good[:len(good) // 2]
  if kind == 'garbage':
    return b'PK\x03\x04' + bytes(range(256)) * 4
  buffer = io.BytesIO()
  with np.load(io.BytesIO(good)) as f:
    arrays = {k: f[k] for k in f.files}
  if kind == 'foreign':
    arrays = {'weights': np.ones(3), '__step__': arrays['__step__']}
  else:
    arrays = {k: v if k == '__step__' else np.full_like(v, np.nan) for k, v in arrays.items()}
  np.savez(buffer, **arrays)
  return buffer.getvalue()


@pytest.mark.parametrize('kind, message', [
    ('truncated', r'is not a Fisher file of this run \(.*\); write it again: python -m '
                  r'hashjax.commands.fisher --workdir='),
    ('garbage', r'is not a Fisher file of this run'),
    ('foreign', r'is not a Fisher file of this run \(.*has no Fisher entry'),
    ('nan', r'is not a Fisher file of this run \(.*is not finite and ≥ 0 everywhere'),
])
def test_a_bad_fisher_file_is_one_line_before_step_0(base, tmp_path, kind, message):
  fisher = os.path.join(base, 'fisher.npz')
  good = open(fisher, 'rb').read()
  try:
    with open(fisher, 'wb') as f:
      f.write(_not_fisher(kind, good))
    with pytest.raises(ConfigError, match='^[^\n]*$') as e:
      hash_trainer.train_and_evaluate(_update(base), str(tmp_path / 'u'))
    assert re.search(message, str(e.value)), str(e.value)
  finally:
    with open(fisher, 'wb') as f:
      f.write(good)
  assert not os.path.exists(tmp_path / 'u' / 'checkpoints' / '1')


def test_codes_of_another_width_are_refused_before_step_0(base, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  copy = tmp_path / 'copy'
  shutil.copytree(base, copy)
  with np.load(copy / 'codes.npz') as f:
    arrays = {k: f[k] for k in f.files}
  arrays.update(bits=np.int64(32), db_codes=np.concatenate([arrays['db_codes']] * 2, axis=1))
  np.savez(copy / 'codes.npz', **arrays)  # as if copied from a 32-bit run
  with pytest.raises(ConfigError, match=r"codes.npz holds 32-bit codes; the model of the run "
                                        r"in .* gives 16: it is not that run's codes.npz$"):
    hash_trainer.train_and_evaluate(_update(str(copy), **{'updating.database_codes': 'keep'}),
                                    str(tmp_path / 'u'))
  assert not os.path.exists(tmp_path / 'u' / 'checkpoints')


@pytest.mark.parametrize('damage', ['_METADATA', 'truncate'])
def test_a_damaged_final_checkpoint_is_one_line_for_update_and_fisher(base, tmp_path, damage,
                                                                      capsys):
  import shutil  # pylint: disable=g-import-not-at-top
  copy = tmp_path / 'copy'
  shutil.copytree(base, copy)
  final = copy / 'checkpoints' / '20' / 'default'
  if damage == '_METADATA':
    os.remove(final / '_METADATA')
  else:
    for folder, _, files in os.walk(final / 'd'):
      for name in files:
        with open(os.path.join(folder, name), 'r+b') as f:
          f.truncate(os.path.getsize(os.path.join(folder, name)) // 2)
  message = (r'the final checkpoint \(step 20\) in .*copy does not restore \(.*\); run its '
             r'train.py command again: it sets the damaged checkpoint aside')
  with pytest.raises(ConfigError, match=f'^{message}[^\n]*$'):
    hash_trainer.train_and_evaluate(_update(str(copy)), str(tmp_path / 'u'))
  assert fisher.main([f'--workdir={copy}']) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and re.search(message, err), err


def test_a_gan_run_is_named_as_one(tmp_path):
  gan_run = tmp_path / 'gan'
  gan_run.mkdir()
  (gan_run / 'config.json').write_text(json.dumps({'nz': 100, 'ngf': 64, 'ndf': 64,
                                                   'beta1': 0.5}))
  with pytest.raises(ConfigError, match=r'gan is a gan.py run: updating.from_workdir=.* must '
                                        r'be a finished train.py run$'):
    update.base_config(str(gan_run))


def test_a_finished_run_without_its_final_checkpoint_is_refused(base, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  copy = tmp_path / 'copy'
  shutil.copytree(base, copy)
  shutil.rmtree(copy / 'checkpoints' / '20')
  with pytest.raises(ConfigError, match=r'has no final checkpoint \(step 20; found: 10\); '
                     'finish that run first'):
    hash_trainer.train_and_evaluate(_update(str(copy)), str(tmp_path / 'u'))


@pytest.mark.parametrize('overrides, match', [
    ({'split.new_classes': '7', 'split.later_fraction': 0.5}, 'set one of split.new_classes'),
    ({'split.new_classes': None, 'split.stage': 'new'}, "split.stage='new' needs"),
    ({'updating.prior': 'ewc'}, "updating.prior='ewc' is not accepted; use one of: none, l2, "
                                'laplace'),
    ({'updating.prior_weight': -1.0}, r'updating.prior_weight=-1.0 must be a finite number ≥ 0'),
    ({'updating.prior_weight': float('inf')}, r'updating.prior_weight=inf must be a finite'),
    ({'updating.code_anchor_weight': float('nan')}, r'updating.code_anchor_weight=nan must'),
    ({'updating.database_codes': 'all'}, "updating.database_codes='all' is not accepted"),
])
def test_bad_update_settings_are_config_errors(overrides, match):
  with pytest.raises(ConfigError, match=match):
    hash_config(_config(**overrides))


def test_code_anchor_loss_by_hand():
  old = np.array([[1.0, -1.0], [1.0, 1.0]])
  h = np.array([[0.5, -0.5], [-1.0, 0.0]])  # ⟨h_i, b_i⟩ = 1 and −1
  expected = np.mean([np.log1p(np.exp(-2.0 * 1)), np.log1p(np.exp(-2.0 * -1))])
  assert float(update.code_anchor_loss(h, old, alpha=2.0)) == pytest.approx(expected, rel=1e-6)
  assert float(update.code_anchor_loss(old, old, alpha=2.0)) < float(
      update.code_anchor_loss(-old, old, alpha=2.0))


def test_a_run_from_before_the_update_settings_resumes(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  plain = {'split.new_classes': None}  # the settings' values in runs made before them
  hash_trainer.train_and_evaluate(_config(num_steps=5, **plain), str(tmp_path))
  path = tmp_path / 'config.json'
  old = json.loads(path.read_text())
  for key in job.HashJob.added_settings:  # as config.json was written before them
    node, *parts = old, *key.split('.')
    for part in parts[:-1]:
      node = node[part]
    del node[parts[-1]]
  for group in [k for k, v in old.items() if v == {}]:  # groups whose keys were all added
    old.pop(group)
  assert 'updating' not in old and 'augment' not in old
  path.write_text(json.dumps(old))
  row = hash_trainer.train_and_evaluate(_config(num_steps=10, **plain), str(tmp_path))
  assert row['step'] == 10
