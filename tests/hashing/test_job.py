import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hashnet_digits
from hashjax.hashing import job, run
from hashjax.hashing import step as hash_trainer
from hashjax.hashing.config import hash_config
from hashjax.runtime import loop
from hashjax.runtime.errors import DataError
from hashjax.runtime.settings import override


def _get_test_config(**overrides):
  c = hashnet_digits.get_config()
  c.bits = 16
  c.batch_size = 32
  c.num_steps = 10
  c.log_every = 2
  c.eval_every = 5
  c.checkpoint_every = 5
  c.split.query_per_class = 5
  c.split.train_per_class = 20
  return override(c, overrides)


class Recorder:
  def __init__(self):
    self.first_step, self.rows, self.evals = None, [], []

  def start(self, total_steps, first_step):
    self.first_step = first_step

  def log(self, row):
    self.rows.append(row)

  def evaluated(self, results):
    self.evals.append(results)

  def close(self):
    pass


def test_train_step_changes_params_and_stays_finite():
  cfg = hash_config(_get_test_config())
  state = hash_trainer.create_train_state(cfg, (8, 8, 1), jax.random.PRNGKey(0))
  before = jax.tree.map(np.asarray, state.params)
  step = hash_trainer.make_train_step(cfg)
  batch = {'image': jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8, 1)),
           'label': jnp.array([0, 1, 0, 1, 2, 2, 3, 3])}
  state, metrics = step(state, batch, jax.random.PRNGKey(2))
  assert int(state.step) == 1 and np.isfinite(float(metrics['loss']))
  assert float(metrics['beta']) == 1.0 and 0.0 <= float(metrics['saturation']) <= 1.0
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, jax.tree.map(np.asarray, state.params))
  assert all(jax.tree.leaves(changed))


def test_soft_similarity_trains_on_multi_hot_labels_and_refuses_class_ids():
  cfg = hash_config(_get_test_config(**{'loss.similarity': 'soft'}))
  state = hash_trainer.create_train_state(cfg, (16, 16, 1), jax.random.PRNGKey(0))
  step = hash_trainer.make_train_step(cfg)
  batch = {'image': jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 1)),
           'label': jnp.array(np.eye(4, dtype=np.int32)[[0, 1, 2, 3, 0, 1, 2, 3]] | np.eye(
               4, k=1, dtype=np.int32)[[0, 1, 2, 3, 0, 1, 2, 3]])}  # two labels each
  state, metrics = step(state, batch, jax.random.PRNGKey(2))
  assert np.isfinite(float(metrics['loss']))
  with pytest.raises(DataError, match="loss.similarity='soft' needs multi-hot labels; digits"):
    job.load_data(cfg)  # digits: class ids


def test_views_train_without_labels_and_repeat_exactly():
  cfg = hash_config(_get_test_config(**{'loss.similarity': 'views'}))
  step = hash_trainer.make_train_step(cfg)
  images = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1), minval=-1, maxval=1)
  runs = []
  for labels in (jnp.zeros(8, jnp.int32), jnp.arange(8)):  # labels are never read
    state = hash_trainer.create_train_state(cfg, (8, 8, 1), jax.random.PRNGKey(0))
    state, metrics = step(state, {'image': images, 'label': labels}, jax.random.PRNGKey(2))
    runs.append((float(metrics['loss']), jax.tree.map(np.asarray, state.params)))
  assert np.isfinite(runs[0][0]) and runs[0][0] == runs[1][0]
  jax.tree.map(np.testing.assert_array_equal, runs[0][1], runs[1][1])


def test_hash_layer_gets_ten_times_the_learning_rate():
  cfg = hash_config(_get_test_config(optimizer='sgd', momentum=0.0, weight_decay=0.0))
  tx = hash_trainer.make_optimizer(cfg)
  params = {'backbone': {'w': jnp.ones(3)}, 'hash_layer': {'w': jnp.ones(3)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['backbone']['w'], -cfg.learning_rate)
  np.testing.assert_allclose(updates['hash_layer']['w'], -10 * cfg.learning_rate)


def test_end_to_end_writes_outputs(tmp_path):
  rec = Recorder()
  results = run.train_and_evaluate(_get_test_config(), str(tmp_path), reporter=rec)
  for name in ('config.json', 'metrics.jsonl', 'eval.json', 'codes.npz'):
    assert (tmp_path / name).exists(), name
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [2, 4, 6, 8, 10]
  assert all({'step', 'loss', 'beta', 'examples_per_sec'} <= set(r) for r in rows)
  assert rows[-1]['examples_per_sec'] > 0
  saved = json.loads((tmp_path / 'eval.json').read_text())
  assert saved == results and 0.0 <= saved['map@all'] <= 1.0 and 'precision@radius2' in saved
  worst, best = saved['map@all_interval']
  assert worst <= saved['map@all'] <= best and worst <= saved['map@all_expected'] <= best
  assert len(rec.evals) == 2  # step 5 and the final one
  codes = np.load(tmp_path / 'codes.npz')
  assert codes['db_codes'].dtype == np.uint8 and codes['db_codes'].shape == (1797 - 50, 2)
  assert int(codes['bits']) == 16
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10', '5']


def _params_at(workdir, step, template_cfg):
  return loop.load_checkpoint(job.HashJob(template_cfg, workdir), workdir, step)[0]


def test_resume_continues_exactly(tmp_path):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  full = _get_test_config(num_steps=20)
  run.train_and_evaluate(full, straight)
  run.train_and_evaluate(_get_test_config(num_steps=10), resumed)
  rec = Recorder()
  run.train_and_evaluate(full, resumed, reporter=rec)
  assert rec.first_step == 10
  a, b = _params_at(straight, 20, full), _params_at(resumed, 20, full)
  assert int(a.step) == int(b.step) == 20
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state)), jax.tree.leaves((b.params, b.opt_state))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  steps = [json.loads(l)['step'] for l in open(os.path.join(resumed, 'metrics.jsonl'))]
  assert steps == list(range(2, 21, 2))
  assert (json.loads(open(os.path.join(straight, 'eval.json')).read())['map@all'] ==
          json.loads(open(os.path.join(resumed, 'eval.json')).read())['map@all'])
