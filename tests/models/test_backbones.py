"""hashjax/models: HashNet, its backbones, and their two paths through hashjax.ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hashjax import HashNet, hash_activation, ops
from tests.models import random_variables


@pytest.mark.parametrize('size', [8, 28, 32])
def test_small_cnn_shapes(size):
  model = HashNet(bits=24, backbone='small_cnn')
  x = jax.ShapeDtypeStruct((3, size, size, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert set(variables) == {'params'} and set(variables['params']) == {'backbone', 'hash_layer'}
  assert jax.eval_shape(model.apply, variables, x).shape == (3, 24)


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
  variables = random_variables(model, x)
  z, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, x)
  assert z.shape == (2, 16)
  before = variables['batch_stats']['backbone']['bn1']['mean']
  assert not jnp.allclose(before, updates['batch_stats']['backbone']['bn1']['mean'])


def test_alexnet_dropout_needs_rng_only_in_training():
  model = HashNet(bits=16, backbone='alexnet')
  x = jnp.ones((1, 64, 64, 3))
  variables = random_variables(model, x)
  train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={'dropout': key}))
  a = train(variables, x, jax.random.PRNGKey(1))
  b = train(variables, x, jax.random.PRNGKey(2))
  assert not jnp.allclose(a, b)
  infer = jax.jit(model.apply)
  assert jnp.allclose(infer(variables, x), infer(variables, x))


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
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  z = jax.jit(model.apply)(variables, x)
  z32 = jax.jit(HashNet(bits=16, backbone='small_cnn').apply)(variables, x)
  assert z.dtype == jnp.float32 and jnp.allclose(z, z32, atol=0.05)


@pytest.mark.parametrize('backbone', ['small_cnn', 'alexnet', 'resnet18', 'resnet50'])
def test_both_paths_have_the_same_variables(backbone):
  """Checkpoints and pretrained weights fit either path: the same names, shapes and dtypes."""
  model = HashNet(bits=16, backbone=backbone)
  size = 8 if backbone == 'small_cnn' else 64
  init = lambda: jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, size, size, 3))))
  cpu = init()
  with ops.force_portable():
    portable = init()
  assert jax.tree.structure(cpu) == jax.tree.structure(portable)
  assert jax.tree.leaves(cpu) == jax.tree.leaves(portable)


def test_tiny_small_cnn_hashnet_agrees_on_both_paths():
  """Forward and backward (parameters and images) traced with the CPU kernels (max pools,
  dense layers) and with flax's own layers give the same values and gradients."""
  if not ops.cpu_kernels():
    pytest.skip('the CPU kernels run on an XLA:CPU backend only')
  model = HashNet(bits=8, backbone='small_cnn')
  x = jnp.floor(2 * jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1)))  # pooling ties
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  loss = lambda v, x: jnp.sum(jnp.tanh(model.apply(v, x)) ** 2)
  # A fresh jit per path: a jitted function's trace is cached by function, not by path.
  run = lambda: (jax.jit(lambda v, x: jax.value_and_grad(loss, argnums=(0, 1))(v, x))(
      variables, x), str(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x)))
  cpu, cpu_jaxpr = run()
  with ops.force_portable():
    portable, portable_jaxpr = run()
  assert cpu_jaxpr.count('custom_vjp_call[') == 4  # two pools, the hidden and hash layers
  assert 'custom_vjp' not in portable_jaxpr
  for a, b in zip(jax.tree.leaves(cpu), jax.tree.leaves(portable)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
