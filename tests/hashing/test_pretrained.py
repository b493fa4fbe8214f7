"""Tests for hashjax/hashing/pretrained.py: torchvision-named weights → HashNet variables."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hashjax.commands import pretrained as pretrained_lib
from hashjax.hashing import pretrained
from hashjax.models import HashNet
from hashjax.runtime.errors import PretrainedError


@functools.lru_cache(maxsize=None)
def _shapes(backbone, size=64):
  model = HashNet(bits=16, backbone=backbone)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros((1, size, size, 3)), train=False))


def _random_variables(backbone, seed=0):
  """HashNet variables of the right structure (eval_shape, no real init), random values."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.random(s.shape, dtype=np.float32), _shapes(backbone))


def _leaf_paths(tree, prefix=()):
  if not isinstance(tree, dict):
    return {prefix}
  return set().union(*(_leaf_paths(v, prefix + (k,)) for k, v in tree.items()))


@pytest.mark.parametrize('backbone', ['alexnet', 'resnet18', 'resnet50'])
def test_mapping_covers_every_backbone_variable(backbone):
  variables = _shapes(backbone)
  mapped = {(c,) + p for c, p, _ in pretrained.torch_mapping(backbone).values()}
  wanted = {(c,) + p for c in variables for p in _leaf_paths(variables[c]) if p[0] == 'backbone'}
  assert mapped == wanted


@pytest.mark.parametrize('backbone,via_file', [('resnet50', False), ('resnet18', True)])
def test_round_trip(backbone, via_file, tmp_path):
  source = _random_variables(backbone)
  state_dict = pretrained.to_torch_state_dict(source, backbone)
  # torchvision's names and layouts (torchvision.models.alexnet / resnet50 state_dict()).
  if backbone == 'resnet50':
    assert state_dict['layer1.0.downsample.0.weight'].shape == (256, 64, 1, 1)
    assert state_dict['bn1.running_var'].shape == (64,)
  weights = {**state_dict, 'fc.weight': np.zeros((1000, 8), np.float32),
             'bn1.num_batches_tracked': np.zeros((), np.int64)}
  if via_file:
    np.savez(tmp_path / 'weights.npz', **weights)
    weights = str(tmp_path / 'weights.npz')
  target = _random_variables(backbone, seed=1)
  loaded = pretrained.load_pretrained(target, weights, backbone)
  for collection in loaded:
    for a, b in zip(jax.tree.leaves(loaded[collection]['backbone']),
                    jax.tree.leaves(source[collection]['backbone'])):
      np.testing.assert_array_equal(a, b)
  # The hash layer is not touched.
  np.testing.assert_array_equal(loaded['params']['hash_layer']['kernel'],
                                target['params']['hash_layer']['kernel'])


def test_missing_unexpected_and_misshaped_keys_are_named():
  variables = _random_variables('alexnet')
  state_dict = pretrained.to_torch_state_dict(variables, 'alexnet')
  # torchvision.models.alexnet().state_dict() shapes.
  assert state_dict['features.0.weight'].shape == (64, 3, 11, 11)
  assert state_dict['classifier.1.weight'].shape == (4096, 9216)
  loaded = pretrained.load_pretrained(_random_variables('alexnet', seed=1), state_dict, 'alexnet')
  np.testing.assert_array_equal(loaded['params']['backbone']['Dense_0']['kernel'],
                                variables['params']['backbone']['Dense_0']['kernel'])
  missing = {k: v for k, v in state_dict.items() if k != 'features.3.bias'}
  with pytest.raises(PretrainedError, match=r"missing key 'features.3.bias'"):
    pretrained.load_pretrained(variables, missing, 'alexnet')
  with pytest.raises(PretrainedError, match=r"unexpected key 'features.1.weight'"):
    pretrained.load_pretrained(variables, {**state_dict, 'features.1.weight': np.zeros(3)},
                               'alexnet')
  wrong = {**state_dict, 'classifier.4.weight': np.zeros((4096, 1000), np.float32)}
  with pytest.raises(PretrainedError, match=r"'classifier.4.weight' has shape \(4096, 1000\)"):
    pretrained.load_pretrained(variables, wrong, 'alexnet')
  with pytest.raises(PretrainedError, match='no pretrained mapping'):
    pretrained.torch_mapping('small_cnn')
  with pytest.raises(PretrainedError, match='does not exist'):
    pretrained.load_pretrained(variables, '/nonexistent/w.npz', 'alexnet')


def test_safetensors_round_trip(tmp_path):
  st = pytest.importorskip('safetensors.numpy')
  variables = _random_variables('resnet18')
  path = str(tmp_path / 'w.safetensors')
  st.save_file(pretrained.to_torch_state_dict(variables, 'resnet18'), path)
  loaded = pretrained.load_pretrained(_random_variables('resnet18', seed=1), path, 'resnet18')
  np.testing.assert_array_equal(loaded['batch_stats']['backbone']['bn1']['mean'],
                                variables['batch_stats']['backbone']['bn1']['mean'])


def test_convert_without_torch_is_a_clear_error(tmp_path, monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == 'torch':
      raise ImportError('no torch')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  with pytest.raises(PretrainedError, match='pip install torch'):
    pretrained.convert_torch(str(tmp_path / 'm.pth'), str(tmp_path / 'o.npz'))
  assert pretrained_lib.main(['a.pth', 'b.npz']) == 2
  with pytest.raises(SystemExit, match='2'):  # argparse: a missing argument
    pretrained_lib.main([])


def _config(tmp_path, **overrides):
  from configs import hashnet_digits  # pylint: disable=g-import-not-at-top
  c = hashnet_digits.get_config()
  c.backbone, c.bits = 'resnet18', 16
  c.update(overrides)
  return c


def test_a_fresh_run_starts_from_the_pretrained_backbone(tmp_path):
  from hashjax.hashing import job as hash_trainer  # pylint: disable=g-import-not-at-top
  from hashjax.runtime import loop, parallel
  source = _random_variables('resnet18')
  np.savez(tmp_path / 'r18.npz', **pretrained.to_torch_state_dict(source, 'resnet18'))
  rng = np.random.default_rng(0)  # RGB images for the 3-channel torchvision stem
  np.savez(tmp_path / 'rgb.npz', image=rng.integers(0, 256, (40, 32, 32, 3), np.uint8),
           label=np.arange(40) % 4)
  cfg = _config(tmp_path, pretrained=str(tmp_path / 'r18.npz'),
                dataset=f'npz:{tmp_path / "rgb.npz"}')
  cfg.split.query_per_class, cfg.split.train_per_class = 2, 5
  job = hash_trainer.HashJob(cfg, str(tmp_path / 'run'))
  state, _ = loop.fresh_state(job, parallel.make_mesh())
  loaded = job.start(state, first_step=0).variables()
  for collection in ('params', 'batch_stats'):
    for a, b in zip(jax.tree.leaves(loaded[collection]['backbone']),
                    jax.tree.leaves(source[collection]['backbone'])):
      np.testing.assert_array_equal(np.asarray(a), b)
  resumed = job.start(state, first_step=5).variables()  # a resumed run keeps its own weights
  assert not np.array_equal(np.asarray(jax.tree.leaves(resumed['params']['backbone'])[0]),
                            jax.tree.leaves(source['params']['backbone'])[0])
