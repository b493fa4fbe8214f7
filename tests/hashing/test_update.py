import json
import os
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
    ({'updating.prior_weight': -1.0}, r'updating.prior_weight=-1.0 must be a number ≥ 0'),
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
