"""The GAN conditioned on a label table's attributes (hair and eye colour on anime faces),
its pictures (attribute grid, interpolation strip, losses.png), `gan.py --mode=sample
--attributes`, and the collapse warning (hashjax/gan/collapse.py), on tiny synthetic folders."""

import logging
import os

import jax
import numpy as np
import pytest
from PIL import Image

import gan
from configs import dcgan_digits
from hashjax.commands import attributes
from hashjax.gan import attribute_classifier
from hashjax.gan import collapse as gan_collapse
from hashjax.gan import evaluation as gan_eval
from hashjax.gan import job as gan_trainer
from hashjax.gan import pictures as gan_pictures
from hashjax.gan import sampling as gan_sampling
from hashjax.gan.config import gan_config
from hashjax.runtime import plumbing as training
from hashjax.runtime.errors import ConfigError

HAIR = {'blue': (0, 0, 255), 'red': (255, 0, 0)}
EYE = {'green': (0, 255, 0), 'red': (255, 0, 0), 'white': (255, 255, 255)}


@pytest.fixture(scope='module')
def faces(tmp_path_factory):
  """36 images of 40×40: the top half the hair colour, the bottom half the eye colour; a
  label table for 30 of them (ids 0..29) by name, and 2 rows naming no file."""
  root = tmp_path_factory.mktemp('faces')
  (root / 'faces').mkdir()
  rows = ['id,hair,eye']
  rng = np.random.default_rng(0)
  for i in range(36):
    hair, eye = rng.choice(list(HAIR)), rng.choice(list(EYE))
    image = np.zeros((40, 40, 3), np.uint8)
    image[:20], image[20:] = HAIR[hair], EYE[eye]
    Image.fromarray(image).save(root / 'faces' / f'{i}.png')
    if i < 30:
      rows.append(f'{i},{hair},{eye}')
  (root / 'labels.csv').write_text('\n'.join(rows + ['98,blue,red', '99,red,red']) + '\n')
  return root


def _config(faces, **overrides):
  c = dcgan_digits.get_config()
  c.dataset, c.labels = f'folder:{faces}/faces', f'{faces}/labels.csv'
  c.conditional, c.nz, c.ngf, c.ndf, c.batch_size = True, 8, 8, 8, 8
  c.num_steps, c.log_every, c.sample_every, c.checkpoint_every = 2, 1, 2, 2
  c.num_samples, c.eval_holdout = 4, 0
  for key, value in overrides.items():
    c[key] = value
  return c


def test_attribute_conditioned_run_writes_its_grid_and_samples_by_name(faces, tmp_path,
                                                                      caplog, capsys):
  with caplog.at_level(logging.WARNING):
    results = gan_trainer.train_and_evaluate(_config(faces), str(tmp_path))
  assert results['step'] == 2
  assert '2 of its 32 rows name no image' in caplog.text  # one warning with the count
  job = gan_trainer.GanJob(gan_config(_config(faces)), str(tmp_path))
  assert len(job.images) == 30 and job.labels.shape == (30, 2)  # untagged faces dropped
  assert job.spec.attribute_values == (('blue', 'red'), ('green', 'red', 'white'))
  grid = np.asarray(Image.open(tmp_path / 'samples' / 'attributes_000002.png'))
  # 2 hair rows × 3 eye columns of 64-px cells (32 px ×2) with 2-px gaps, names in margins.
  assert grid.shape[0] == 20 + 2 * 66 + 2 and grid.shape[1] > 3 * 66 + 2
  for name in ('interpolation_000002.png', 'step_000002.png'):
    assert (tmp_path / 'samples' / name).exists()
  assert (tmp_path / 'losses.png').exists()
  out = tmp_path / 'blue.png'
  code = gan.main(['gan.py', '--mode=sample', f'--workdir={tmp_path}', '--num_samples=3', f'--out={out}',
                   '--attributes=hair=blue,eye=red'])
  assert code == 0 and out.exists() and 'wrote' in capsys.readouterr().out
  for bad, message in (('hair=purple', "hair='purple' is unknown; accepted: blue, red"),
                       ('hat=red', "'hat=red' is not NAME=VALUE with NAME one of: hair, eye")):
    assert gan.main(['gan.py', '--mode=sample', f'--workdir={tmp_path}',
                     f'--attributes={bad}']) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f'gan.py: error: attributes: {message}')


def test_attribute_rows_keep_the_chosen_values_and_follow_the_data():
  labels = np.array([[0, 2], [0, 2], [1, 0], [1, 1]])
  rows = gan_eval.attribute_rows(labels, {0: 0}, 5, seed=0)
  np.testing.assert_array_equal(rows, [[0, 2]] * 5)  # the only eye value hair 0 has
  rows = gan_eval.attribute_rows(labels, {1: 1}, 4, seed=0)
  np.testing.assert_array_equal(rows, [[1, 1]] * 4)
  rows = gan_eval.attribute_rows(labels, {0: 0, 1: 0}, 2, seed=0)  # unseen: as asked
  np.testing.assert_array_equal(rows, [[0, 0]] * 2)


def test_kept_untagged_faces_have_unknown_attributes(faces, tmp_path):
  job = gan_trainer.GanJob(gan_config(_config(faces, unlabelled='keep')), str(tmp_path))
  assert len(job.images) == 36 and (job.labels == -1).all(1).sum() == 6


def test_label_table_settings_are_checked(faces, tmp_path):
  with pytest.raises(ConfigError, match=r"labels='x.csv' is a label table for a folder: "
                                        r"dataset, not dataset='digits'"):
    gan_config({**_config(faces).to_dict(), 'dataset': 'digits', 'labels': 'x.csv'})
  with pytest.raises(ConfigError, match="unlabelled='all' is not accepted; use one of: drop"):
    gan_config(_config(faces, unlabelled='all'))
  unconditional = _config(faces, conditional=False, num_steps=1)
  with pytest.raises(ConfigError, match="attributes='hair=red': the run in .* is not "
                                        'conditioned on attributes'):  # before any checkpoint
    gan_sampling.sample(unconditional, str(tmp_path), 2, attributes='hair=red')


def test_grid_layout_and_slerp():
  np.testing.assert_array_equal(gan_pictures.attribute_grid_ids((2, 3, 4))[:4],
                                [[0, 0, -1], [0, 1, -1], [0, 2, -1], [1, 0, -1]])
  np.testing.assert_array_equal(gan_pictures.attribute_grid_ids((3,)), [[0], [1], [2]])
  a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
  path = gan_pictures.slerp(a, b, 5)
  np.testing.assert_allclose(path[[0, -1]], [a, b], atol=1e-6)
  np.testing.assert_allclose(path[2], np.sqrt(0.5) * np.array([1.0, 2.0]), atol=1e-6)


def _row(step, d_real, d_fake, g_loss):
  return {'step': step, 'd_real': d_real, 'd_fake': d_fake, 'g_loss': g_loss}


def test_collapse_warns_once_after_the_window_with_g_loss_climbing():
  watch = gan_collapse.CollapseWatch(window=3)
  last_good = lambda: '/run/checkpoints/300'
  assert watch.update(_row(100, 0.99, 0.01, 4.0), last_good) is None
  assert watch.update(_row(200, 0.50, 0.01, 4.0), last_good) is None  # the streak breaks
  rows = [_row(300, 0.99, 0.010, 4.5), _row(400, 0.995, 0.005, 5.0)]
  assert [watch.update(r, last_good) for r in rows] == [None, None]
  warning = watch.update(_row(500, 0.999, 0.001, 6.9), last_good)
  assert warning == (
      'step 500: the discriminator has won outright for 3 logged steps since step 300 '
      '(D(x) = 0.999, D(G(z)) = 0.0010, g_loss 4.50 → 6.90); the generator is unlikely to '
      'recover: resume from /run/checkpoints/300 with a different setting, e.g. '
      '--config.label_smoothing=0.1 or a lower learning_rate')
  assert watch.update(_row(600, 0.999, 0.001, 8.0), last_good) is None  # once per run


def test_no_collapse_warning_without_climbing_loss_or_when_off():
  watch = gan_collapse.CollapseWatch(window=2)
  rows = [_row(1, 0.99, 0.01, 5.0), _row(2, 0.99, 0.01, 4.0), _row(3, 0.99, 0.01, 3.0)]
  assert [watch.update(r, lambda: None) for r in rows] == [None] * 3
  off = gan_collapse.CollapseWatch(window=0)
  assert off.update(_row(1, 1.0, 0.0, 9.0), lambda: None) is None
  watch = gan_collapse.CollapseWatch(window=2)
  assert watch.update(_row(1, 0.99, 0.01, 5.0), lambda: None) is None
  assert 'start again (no checkpoint was saved before it) with a different setting' in (
      watch.update(_row(2, 0.99, 0.01, 6.0), lambda: None))


def test_the_loop_passes_every_logged_row_to_the_watch(faces, tmp_path, monkeypatch, caplog):
  seen = []

  def update(self, row, last_good):
    seen.append(row['step'])
    return f'collapsed at {row["step"]}' if row['step'] == 2 else None
  monkeypatch.setattr(gan_collapse.CollapseWatch, 'update', update)
  with caplog.at_level(logging.WARNING, logger='hashjax.gan.job'):
    gan_trainer.train_and_evaluate(_config(faces), str(tmp_path))
  assert seen == [1, 2]
  assert [r.getMessage() for r in caplog.records if r.name == 'hashjax.gan.job'] == [
      'collapsed at 2']
  assert os.path.exists(tmp_path / 'metrics.jsonl')


def _colour_faces(rows, hair_values, eye_values, size=32):
  """Synthetic faces [N, S, S, 3] in [−1, 1] of the given attribute rows (as `faces`)."""
  out = np.zeros((len(rows), size, size, 3), np.float32)
  for i, (h, e) in enumerate(rows):
    out[i, :size // 2] = HAIR[hair_values[h]]
    out[i, size // 2:] = EYE[eye_values[e]]
  return out / 127.5 - 1.0


def test_classifier_scores_a_faithful_generator_high_and_one_that_ignores_its_input_low(
    faces, tmp_path, monkeypatch):
  cfg = gan_config(_config(faces))
  images, labels, spec = gan_trainer.load_images(cfg, None)
  classifier, real = attribute_classifier.train(images, labels, spec.attribute_names,
                                                spec.attribute_sizes, str(tmp_path), 40, 0)
  assert real['held_out'] == 3 and real['hair_accuracy_real'] == 1.0
  assert (tmp_path / 'attribute_classifier' / 'eval.json').exists()
  hair, eye = spec.attribute_values
  # On every colour pair the classifier is right (the colours are the attributes).
  every = [(h, e) for h in range(len(hair)) for e in range(len(eye))]
  np.testing.assert_array_equal(
      attribute_classifier.predict_all(classifier, _colour_faces(every, hair, eye)), every)
  faithful = lambda state, z, rows: _colour_faces(np.asarray(rows), hair, eye)
  monkeypatch.setattr(attribute_classifier.gan_eval, 'generate_ema', faithful)
  scores = attribute_classifier.score_samples(None, cfg, classifier, labels, spec.attribute_names,
                                              spec.attribute_values)
  assert scores['hair_accuracy_generated'] == scores['eye_accuracy_generated'] == 1.0
  ignoring = lambda state, z, rows: _colour_faces([(0, 0)] * len(rows), hair, eye)
  monkeypatch.setattr(attribute_classifier.gan_eval, 'generate_ema', ignoring)
  scores = attribute_classifier.score_samples(None, cfg, classifier, labels, spec.attribute_names,
                                              spec.attribute_values)
  assert scores['hair_accuracy_by_value'] == {'blue': 1.0, 'red': 0.0}
  assert scores['hair_accuracy_generated'] == 0.5
  assert scores['eye_accuracy_generated'] == pytest.approx(1 / 3)


def test_the_classifier_sees_each_image_or_its_mirror_image():
  images = np.arange(6 * 2 * 3 * 1, dtype=np.float32).reshape(6, 2, 3, 1)
  key = jax.random.PRNGKey(3)
  out = np.asarray(attribute_classifier.mirror(key, images))
  flipped = [bool(np.array_equal(o, x[:, ::-1])) for o, x in zip(out, images)]
  kept = [bool(np.array_equal(o, x)) for o, x in zip(out, images)]
  assert all(f != k for f, k in zip(flipped, kept))  # each one or the other, never mixed
  assert 0 < sum(flipped) < len(images)
  np.testing.assert_array_equal(out, attribute_classifier.mirror(key, images))


def test_a_run_with_the_classifier_reports_accuracies_at_every_evaluation(faces, tmp_path):
  config = _config(faces, classifier_steps=20, eval_every=1)
  results = gan_trainer.train_and_evaluate(config, str(tmp_path))
  rows = training.read_rows(str(tmp_path / 'eval.jsonl'))
  assert [r['step'] for r in rows] == [0, 1, 2]
  for key in ('hair_accuracy_real', 'eye_accuracy_real', 'hair_accuracy_generated',
              'eye_accuracy_generated'):
    assert all(0.0 <= r[key] <= 1.0 for r in rows) and results[key] == rows[-1][key]
  assert set(results['eye_accuracy_by_value']) == {'green', 'red', 'white'}
  # Scoring a run afterwards: the same classifier (reloaded), the newest checkpoint.
  scored = attributes.score_run(str(tmp_path), 20)
  assert scored['step'] == 2 and scored['hair_accuracy_generated'] == pytest.approx(
      results['hair_accuracy_generated'])
  assert (tmp_path / 'attributes.json').exists()


def test_classifier_settings_and_command_errors(faces, tmp_path, capsys):
  with pytest.raises(ConfigError, match='classifier_steps=5 scores an attribute-conditioned '
                                        'GAN: it needs labels=FILE.csv and conditional=True'):
    gan_config(_config(faces, classifier_steps=5, conditional=False))
  assert attributes.main([f'--workdir={tmp_path}', '--steps=0']) == 2
  assert capsys.readouterr().err == 'attributes: error: --steps=0 must be ≥ 1\n'
  assert attributes.main([f'--workdir={tmp_path}']) == 2
  assert capsys.readouterr().err.startswith(
      f'attributes: error: no config.json in {tmp_path}')
