import jax
import jax.numpy as jnp
import pytest

from hashjax import HashNet, hash_activation


@pytest.mark.parametrize('size', [8, 28, 32])
def test_small_cnn_shapes(size):
  model = HashNet(bits=24, backbone='small_cnn')
  x = jnp.zeros((3, size, size, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert set(variables) == {'params'} and set(variables['params']) == {'backbone', 'hash_layer'}
  assert model.apply(variables, x).shape == (3, 24)


@pytest.mark.parametrize('backbone,size,features', [
    ('alexnet', 224, 4096), ('resnet18', 224, 512), ('resnet50', 224, 2048)])
def test_large_backbones_shapes(backbone, size, features):
  model = HashNet(bits=48, backbone=backbone)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape)))
  assert variables['params']['hash_layer']['kernel'].shape == (features, 48)
  assert ('batch_stats' in variables) == backbone.startswith('resnet')
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(x.shape)), variables)
  assert out.shape == (2, 48)


def test_resnet18_runs_and_updates_batch_stats():
  model = HashNet(bits=16, backbone='resnet18')
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  z, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert z.shape == (2, 16)
  before = variables['batch_stats']['backbone']['bn1']['mean']
  assert not jnp.allclose(before, updates['batch_stats']['backbone']['bn1']['mean'])


def test_alexnet_dropout_needs_rng_only_in_training():
  model = HashNet(bits=16, backbone='alexnet')
  x = jnp.ones((1, 64, 64, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  a = model.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  b = model.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  assert not jnp.allclose(a, b)
  assert jnp.allclose(model.apply(variables, x), model.apply(variables, x))


def test_hash_activation_approaches_sign():
  z = jnp.array([-0.3, 0.2])
  assert jnp.allclose(hash_activation(z, 1000.0), jnp.array([-1.0, 1.0]))
  assert jnp.allclose(hash_activation(z, 1.0), jnp.tanh(z))


def test_unknown_backbone():
  with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
    HashNet(bits=8, backbone='vgg16').init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = HashNet(bits=16, backbone='small_cnn', dtype=jnp.bfloat16)
  x = jnp.ones((2, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  z = model.apply(variables, x)
  z32 = HashNet(bits=16, backbone='small_cnn').apply(variables, x)
  assert z.dtype == jnp.float32 and jnp.allclose(z, z32, atol=0.05)


@pytest.mark.parametrize('shape,window,stride,padding', [
    ((2, 8, 8, 3), 2, 2, 0), ((2, 7, 9, 4), 2, 2, 0), ((1, 55, 55, 2), 3, 2, 0),
    ((2, 16, 16, 3), 3, 2, 1)])
def test_max_pool_equals_flax_max_pool(shape, window, stride, padding):
  import flax.linen as nn
  from hashjax.models.backbones import max_pool
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ref = lambda x: nn.max_pool(x, (window,) * 2, (stride,) * 2, padding=((padding,) * 2,) * 2)
  ours = lambda x: max_pool(x, window, stride, padding)
  assert jnp.array_equal(ours(x), ref(x))
  loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)))
  assert jnp.allclose(jax.grad(loss(ours))(x), jax.grad(loss(ref))(x))
  # Ties (few distinct values): the gradient goes to the first maximum, as in flax and PyTorch.
  ties = jnp.floor(x * 2)
  assert jnp.array_equal(jax.grad(loss(ours))(ties), jax.grad(loss(ref))(ties))
