"""Tests of hashjax/models/."""

import jax
import numpy as np


def random_variables(model, *args, seed=0):
  """`model`'s variables for the inputs `args`, with random values in place of its
  initialisers: kernels N(0, 1/fan_in), BatchNorm scales and variances 1, the rest 0.

  Shapes come from `jax.eval_shape`, so no init program is compiled (XLA:CPU compiles a
  ResNet-18's initialisers in seconds; `init` is still traced). For tests whose checks do
  not depend on how the weights were drawn.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)

  def value(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
    return np.full(leaf.shape, 1.0 if name in ('scale', 'var') else 0.0, leaf.dtype)
  return jax.tree_util.tree_map_with_path(value, shapes)
