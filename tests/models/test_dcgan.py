
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hashjax import ops
from hashjax.models.dcgan import (
  Discriminator,
  Generator,
  StridedConv,
  StridedConvTranspose,
)
from tests.ops.paths import on_path

UP = (lambda f: nn.ConvTranspose(f, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2))),
      StridedConvTranspose, 2.0)
DOWN = (lambda f: nn.Conv(f, (4, 4), strides=(2, 2), padding=1), StridedConv, 0.5)


@pytest.mark.parametrize('path', ['cpu', 'portable'])
@pytest.mark.parametrize('layers,shape,features', [
    (UP, (2, 4, 4, 3), 5), (UP, (2, 10, 8, 6), 32),
    (DOWN, (2, 8, 8, 3), 5), (DOWN, (1, 16, 18, 32), 4)])  # more shapes: test_ops_strided.py
def test_strided_layers_equal_flax_layers_with_the_same_kernel(layers, shape, features, path):
  make_reference, make_ours, scale = layers
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  reference, ours = make_reference(features), make_ours(features)
  variables = jax.jit(reference.init)(jax.random.PRNGKey(1), x)
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
  # Each computation one jitted program (fresh functions: traces are cached by function).
  value_and_grads = lambda m: jax.jit(lambda v, x: (m.apply(v, x), jax.grad(
      loss(m), argnums=(0, 1))(v, x)))
  with on_path(path):
    assert jax.tree.map(jnp.shape, jax.eval_shape(ours.init, jax.random.PRNGKey(2), x)) == (
        jax.tree.map(jnp.shape, variables))  # same names and kernel layout: interchangeable
    y, g = value_and_grads(ours)(variables, x)
  assert y.shape == (shape[0], int(scale * shape[1]), int(scale * shape[2]), features)
  y_ref, g_ref = value_and_grads(reference)(variables, x)
  np.testing.assert_allclose(y, y_ref, atol=2e-6)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)  # float32 sums of ~100 terms


def test_strided_conv_rejects_odd_sizes():
  with pytest.raises(ValueError, match=r'even height and width, got \(5, 4\)'):
    StridedConv(2).init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 4, 3)))


@pytest.mark.parametrize('size', [32, 64])
@pytest.mark.parametrize('classes', [0, 10])
def test_generator_and_discriminator_shapes(size, classes):
  g = Generator(image_size=size, nz=16, ngf=8, channels=3, num_classes=classes)
  d = Discriminator(image_size=size, ndf=8, num_classes=classes)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 16))
  labels = jnp.arange(4) if classes else None
  # Shapes by tracing only (XLA:CPU compiles these slowly); values for one variant below.
  g_vars = jax.eval_shape(g.init, jax.random.PRNGKey(1), z, labels)
  images = jax.eval_shape(g.apply, g_vars, z, labels)
  assert images.shape == (4, size, size, 3)
  d_vars = jax.eval_shape(d.init, jax.random.PRNGKey(2), images, labels)
  assert jax.eval_shape(d.apply, d_vars, images, labels).shape == (4,)
  # No BatchNorm on D's first layer; one after every later conv.
  assert len(d_vars['batch_stats']) == {32: 2, 64: 3}[size]
  assert 'BatchNorm_0' in d_vars['batch_stats'] and 'StridedConv_0' in d_vars['params']


@pytest.fixture(scope='module')
def conditional_g():
  """A conditional generator, its variables and its jitted apply: one compilation each for
  the tests below."""
  g = Generator(image_size=32, nz=16, ngf=8, channels=3, num_classes=10)
  v = jax.jit(g.init)(jax.random.PRNGKey(1), jnp.zeros((4, 16)), jnp.arange(4))
  return g, v, jax.jit(g.apply)


def test_generator_output_is_in_range_and_discriminator_gives_logits(conditional_g):
  _, v, apply = conditional_g
  d = Discriminator(image_size=32, ndf=8, num_classes=10)
  z, labels = jax.random.normal(jax.random.PRNGKey(0), (4, 16)), jnp.arange(4)
  images = apply(v, z, labels)
  assert images.shape == (4, 32, 32, 3) and float(jnp.abs(images).max()) <= 1.0
  logits = jax.jit(lambda x, l: d.apply(d.init(jax.random.PRNGKey(2), x, l), x, l))(images,
                                                                                   labels)
  assert logits.shape == (4,) and bool(jnp.all(jnp.isfinite(logits)))


def test_conditional_generator_depends_on_the_class(conditional_g):
  _, v, apply = conditional_g
  z = jnp.ones((4, 16))
  assert not np.allclose(apply(v, z, jnp.array([0, 0, 0, 0])), apply(v, z, jnp.array([2] * 4)))


def test_initialisation_scales():
  g = Generator(image_size=32, nz=100, ngf=32, channels=3)
  v = jax.jit(g.init)(jax.random.PRNGKey(0), jnp.zeros((1, 100)))
  kernel = v['params']['StridedConvTranspose_0']['kernel']
  assert abs(float(kernel.std()) - 0.02) < 0.002
  scale = v['params']['BatchNorm_0']['scale']
  assert abs(float(scale.mean()) - 1.0) < 0.01 and 0.01 < float(scale.std()) < 0.03


def test_unsupported_resolution():
  with pytest.raises(ValueError, match='image_size=48 is not supported'):
    Generator(image_size=48).init(jax.random.PRNGKey(0), jnp.zeros((1, 100)))


@pytest.mark.slow
def test_tiny_generator_and_discriminator_agree_on_both_paths():
  """A D + G forward and backward pass (BatchNorm in training mode), traced with the CPU
  kernels and with flax's and lax's own ops: the same variables, values and gradients."""
  if not ops.cpu_kernels():
    pytest.skip('the CPU kernels run on an XLA:CPU backend only')
  g = Generator(image_size=32, nz=4, ngf=4, channels=3, num_classes=2)
  d = Discriminator(image_size=32, ndf=4, num_classes=2)
  z, labels = jax.random.normal(jax.random.PRNGKey(0), (2, 4)), jnp.arange(2)

  def losses(g_vars, d_vars, z):
    fake, _ = g.apply(g_vars, z, labels, train=True, mutable=['batch_stats'])
    logits, _ = d.apply(d_vars, fake, labels, train=True, mutable=['batch_stats'])
    return jnp.sum(jax.nn.softplus(-logits)), fake

  def run(z):  # jitted afresh for each path: one program each, not op by op
    g_vars = g.init(jax.random.PRNGKey(1), z, labels)
    d_vars = d.init(jax.random.PRNGKey(2), jnp.zeros((2, 32, 32, 3)), labels)
    (loss, fake), grads = jax.value_and_grad(losses, argnums=(0, 1, 2), has_aux=True)(
        g_vars, d_vars, z)
    return (g_vars, d_vars), (loss, fake), grads

  cpu = jax.jit(lambda z: run(z))(z)
  with ops.force_portable():
    portable = jax.jit(lambda z: run(z))(z)
  variables = lambda out: jax.tree_util.tree_flatten_with_path(out[0])
  assert [(k, v.shape) for k, v in variables(cpu)[0]] == [(k, v.shape)
                                                          for k, v in variables(portable)[0]]
  for a, b in zip(jax.tree.leaves(cpu[1:]), jax.tree.leaves(portable[1:])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
