import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dcgan_digits, gan_grid, gan_ring
from hashjax.gan import job as gan_trainer
from hashjax.gan import losses, toy2d
from hashjax.gan import sampling as gan_sampling
from hashjax.gan import step as gan_step
from hashjax.gan.config import gan_config
from hashjax.runtime import errors
from hashjax.runtime import plumbing as training
from hashjax.runtime.errors import ConfigError


def _get_test_config(**overrides):
  c = dcgan_digits.get_config()
  c.nz, c.ngf, c.ndf = 16, 8, 8
  c.batch_size = 16
  c.num_steps = 6
  c.log_every = 2
  c.sample_every = 3
  c.checkpoint_every = 3
  c.num_samples = 8
  c.eval_holdout = 0  # the JSD estimate has its own test
  for key, value in overrides.items():
    c[key] = value
  return c


SPEC = gan_step.DataSpec(channels=1, num_classes=10)


def _batch(n=16):
  images = jax.random.uniform(jax.random.PRNGKey(3), (n, 32, 32, 1), minval=-1, maxval=1)
  return {'image': images, 'label': jnp.arange(n) % 10}


@pytest.mark.parametrize('conditional', [False, True])
def test_one_step_changes_both_networks_and_stays_finite(conditional):
  cfg = gan_config(_get_test_config(conditional=conditional))
  state = gan_step.create_state(cfg, SPEC, jax.random.PRNGKey(0))
  before = jax.tree.map(np.asarray, (state.g_params, state.d_params))
  step = gan_step.make_train_step(cfg, SPEC.num_classes)
  state, metrics = step(state, _batch(), jax.random.PRNGKey(1))
  after = jax.tree.map(np.asarray, (state.g_params, state.d_params))
  for name, b, a in zip(('G', 'D'), before, after):
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(b), jax.tree.leaves(a))), name
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(a)), name
  for key in ('d_loss', 'g_loss', 'd_real', 'd_fake', 'jsd_lower_bound'):
    assert np.isfinite(float(metrics[key])), key
  assert int(state.step) == 1


def test_real_and_fake_batch_statistics_never_mix():
  cfg = gan_config(_get_test_config())
  state = gan_step.create_state(cfg, SPEC, jax.random.PRNGKey(0))
  real = _batch()['image']
  fake = jax.random.normal(jax.random.PRNGKey(5), real.shape) * 0.1 + 0.5  # other statistics
  update = jax.jit(lambda p, s, o, r, f: gan_step.discriminator_update(
      state, p, s, o, r, None, f, None, label_smoothing=0.0))
  _, stats, *_ = update(state.d_params, state.d_stats, state.d_opt, real, fake)

  @jax.jit
  def bn_pass(stats, images):
    _, upd = state.d_apply({'params': state.d_params, 'batch_stats': stats}, images,
                           train=True, mutable=['batch_stats'])
    return upd['batch_stats']

  separate = bn_pass(bn_pass(state.d_stats, real), fake)
  mixed = bn_pass(state.d_stats, jnp.concatenate([real, fake]))
  for got, want, wrong in zip(jax.tree.leaves(stats), jax.tree.leaves(separate),
                              jax.tree.leaves(mixed)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(g, w, atol=1e-4) for g, w in zip(jax.tree.leaves(stats),
                                                               jax.tree.leaves(mixed)))


class Recorder(training.SilentReporter):
  def __init__(self):
    self.first_step = None

  def start(self, total_steps, first_step):
    self.first_step = first_step


def test_holdout_is_disjoint_from_training_data():
  cfg = gan_config(_get_test_config(eval_holdout=100))
  train, _, held, _, _ = gan_trainer.load_data(cfg, None)
  assert len(train) + len(held) == 1797 and len(held) == 100
  rows = {r.tobytes() for r in train}
  assert sum(r.tobytes() in rows for r in held) <= 5  # digits has a few exact duplicates
  with pytest.raises(ConfigError, match='eval_holdout=1000 is more than half'):
    gan_trainer.load_data(gan_config(_get_test_config(eval_holdout=1000)), None)


def test_end_to_end_writes_samples_and_resumes(tmp_path):
  results = gan_trainer.train_and_evaluate(_get_test_config(num_steps=3), str(tmp_path))
  assert results['step'] == 3
  rec = Recorder()
  results = gan_trainer.train_and_evaluate(_get_test_config(), str(tmp_path), reporter=rec)
  assert rec.first_step == 3 and results['step'] == 6
  # The sample grids, and an interpolation strip at the end of each run (a checkpoint).
  assert sorted(os.listdir(tmp_path / 'samples')) == [
      'interpolation_000003.png', 'interpolation_000006.png', 'step_000003.png',
      'step_000006.png']
  assert (tmp_path / 'losses.png').stat().st_size > 5000
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [2, 3, 4, 6]  # each step once; 3 ended the first run
  assert {'d_loss', 'g_loss', 'jsd_lower_bound', 'examples_per_sec'} <= set(rows[-1])
  assert json.load(open(tmp_path / 'eval.json'))['step'] == 6
  path = gan_sampling.sample(_get_test_config(), str(tmp_path), num_samples=5)
  assert path.endswith('sample_000006.png') and os.path.exists(path)


def test_sample_takes_the_model_settings_from_the_runs_config_json(tmp_path):
  gan_trainer.train_and_evaluate(_get_test_config(num_steps=2), str(tmp_path))  # batch 16, nz 16
  default = dcgan_digits.get_config()  # what gan.py --mode=sample passes: batch 64, nz 100
  path = gan_sampling.sample(default, str(tmp_path), num_samples=4)
  assert path.endswith('sample_000002.png') and os.path.exists(path)
  os.remove(tmp_path / 'config.json')  # a run without one: the config given must fit
  with pytest.raises(ConfigError, match=r'the newest checkpoint in .* does not fit the model '
                                        r'settings of the config given \(nz=100, ngf=8, '
                                        r'ndf=8, .*\): checkpoint 2 stores state/g_params/'
                                        r'ConvTranspose_0/kernel with shape \(4, 4, 16, 32\); '
                                        r'the model wants \(4, 4, 100, 32\); sample with the '
                                        'config the run was trained with$'):
    gan_sampling.sample(_get_test_config(nz=100), str(tmp_path), num_samples=4)


@pytest.fixture(scope='module')
def one_step_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('gan') / 'run'
  gan_trainer.train_and_evaluate(_get_test_config(num_steps=1), str(workdir))
  return workdir


@pytest.mark.parametrize('num_samples, out, message', [
    (0, None, r'num_samples=0 is out of range; accepted: 1\.\.4096 \(one grid image\)'),
    (100_000_000, None, r'num_samples=100000000 is out of range; accepted: 1\.\.4096'),
    (4, 'folder/', r"out='.*folder/' is a folder; give the path of a PNG file"),
    (4, 'file/grid.png', r"out='.*file/grid.png': its folder cannot be made"),
])
def test_sample_arguments_are_one_line_and_write_nothing(one_step_run, tmp_path, num_samples,
                                                        out, message):
  workdir = one_step_run
  (tmp_path / 'file').write_text('a file where a folder should be')
  before = sorted(os.listdir(workdir / 'samples'))
  with pytest.raises(ConfigError, match=f'^{message}'):
    gan_sampling.sample(_get_test_config(), str(workdir), num_samples,
                        None if out is None else f'{tmp_path}/{out}')  # a '/' at its end kept
  assert sorted(os.listdir(workdir / 'samples')) == before
  assert not any(name.endswith('.tmp') for name in os.listdir(tmp_path))


def test_sample_from_a_missing_workdir_creates_nothing(tmp_path):
  with pytest.raises(ConfigError, match=r"workdir '.*nope' does not exist; train first"):
    gan_sampling.sample(_get_test_config(), str(tmp_path / 'nope'), 4)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ConfigError, match=r'no checkpoint in .*empty/checkpoints \(found: none\)'):
    gan_sampling.sample(_get_test_config(), str(tmp_path / 'empty'), 4)
  assert not (tmp_path / 'nope').exists() and os.listdir(tmp_path / 'empty') == []


def test_jsd_eval_is_logged_and_written(tmp_path, monkeypatch):
  plotted = []  # the evaluated steps each losses.png shows
  plot = gan_trainer.gan_pictures.save_loss_plot
  monkeypatch.setattr(gan_trainer.gan_pictures, 'save_loss_plot', lambda path, rows, evals, t: (
      plotted.append([r['step'] for r in evals]), plot(path, rows, evals, t))[1])
  cfg = _get_test_config(num_steps=4, eval_every=2, eval_holdout=64, eval_steps=10)
  results = gan_trainer.train_and_evaluate(cfg, str(tmp_path))
  assert plotted[-1] == [0, 2, 4]  # the last losses.png has the final evaluation too
  rows = [json.loads(l) for l in open(tmp_path / 'eval.jsonl')]
  assert [r['step'] for r in rows] == [0, 2, 4]
  assert all(-0.1 < r['jsd'] <= np.log(2) + 1e-9 for r in rows)  # too few steps to mean more
  saved = json.load(open(tmp_path / 'eval.json'))
  for key in ('step', 'jsd_lower_bound', 'samples', 'jsd', 'jsd_ci', 'jsd_accuracy'):
    assert key in saved, key
  low, high = saved['jsd_ci']
  assert low <= saved['jsd'] <= high and saved['jsd'] == results['jsd'] == rows[-1]['jsd']
  assert os.path.exists(tmp_path / 'jsd_curve.png')


def test_nan_loss_stops_with_the_step_and_last_good_checkpoint(tmp_path, monkeypatch):
  gan_trainer.train_and_evaluate(_get_test_config(num_steps=3), str(tmp_path))
  monkeypatch.setattr(losses, 'generator_loss', lambda logits, kind: jnp.nan * jnp.sum(logits))
  with pytest.raises(errors.DivergedError, match=r'non-finite loss at step 4 \(g_loss=nan\); '
                                                   r'the last good checkpoint is step 3 in '):
    gan_trainer.train_and_evaluate(_get_test_config(), str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3']  # nothing non-finite was saved


# --- the 2-D toys (configs/gan_ring.py, gan_grid.py): PacGAN's MLP GAN ------------------------


def _toy_config(config, **overrides):
  c = config.get_config()
  c.ngf, c.ndf, c.num_steps, c.log_every = 16, 8, 4, 2
  c.eval_every = c.sample_every = c.checkpoint_every = 2
  c.eval_holdout, c.eval_steps = 64, 20
  for key, value in overrides.items():
    c[key] = value
  return c


@pytest.mark.parametrize('config', [gan_ring, gan_grid])
def test_mlp_gan_end_to_end_reports_modes_and_jsd(tmp_path, config):
  results = gan_trainer.train_and_evaluate(_toy_config(config), str(tmp_path))
  assert results['step'] == 4
  saved = json.load(open(tmp_path / 'eval.json'))
  for key in ('jsd', 'jsd_ci', 'jsd_accuracy', 'modes', 'high_quality', 'kde_jsd', 'step',
              'jsd_lower_bound', 'samples'):
    assert key in saved, key
  assert saved['num_modes'] == len(toy2d.DATASETS[_toy_config(config).dataset]().means_Gx2)
  rows = [json.loads(l) for l in open(tmp_path / 'eval.jsonl')]
  assert [r['step'] for r in rows] == [0, 2, 4]
  assert (tmp_path / 'samples' / 'step_000004.png').exists()
  assert (tmp_path / 'jsd_curve.png').exists()


def test_a_final_sample_grid_kept_out_by_a_full_disk_is_written_again(tmp_path, monkeypatch):
  from hashjax.gan import evaluation as gan_eval  # pylint: disable=g-import-not-at-top
  real = gan_eval.write_sample_image
  left = {'n': 1}

  def full_once(path, *args, **kwargs):
    if path.endswith('step_000006.png') and left['n']:
      left['n'] -= 1
      return False  # what write_or_warn answers on a full disk
    return real(path, *args, **kwargs)

  monkeypatch.setattr(gan_eval, 'write_sample_image', full_once)
  results = gan_trainer.train_and_evaluate(_get_test_config(), str(tmp_path))
  assert left['n'] == 0 and os.path.exists(results['samples'])
