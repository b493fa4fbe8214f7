"""Random views (hashjax/hashing/augment.py): pure, jittable, each augmentation does what it says."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hashnet_digits
from hashjax.hashing import augment
from hashjax.hashing.config import hash_config
from hashjax.runtime.errors import ConfigError
from hashjax.runtime.settings import override

OFF = augment.Strengths(crop=0.0, flip=False, rotate=0.0, brightness=0.0, contrast=0.0,
                        noise=0.0, cutout=0.0)


def _image(h=12, w=10, c=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (h, w, c)), jnp.float32)


def test_all_off_is_the_identity_and_views_pair_up():
  images = jnp.stack([_image(seed=s) for s in range(3)])
  out, ids = jax.jit(augment.views, static_argnums=2)(jax.random.PRNGKey(0), images, OFF)
  np.testing.assert_array_equal(out, jnp.concatenate([images, images]))
  np.testing.assert_array_equal(ids, [0, 1, 2, 0, 1, 2])


def test_views_are_deterministic_per_key_and_differ_between_views():
  images = jnp.stack([_image(seed=s) for s in range(2)])
  views = jax.jit(augment.views, static_argnums=2)
  strengths = augment.Strengths()
  a, _ = views(jax.random.PRNGKey(1), images, strengths)
  b, _ = views(jax.random.PRNGKey(1), images, strengths)
  c, _ = views(jax.random.PRNGKey(2), images, strengths)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert not np.allclose(a[0], a[2])  # two views of image 0
  assert a.shape == (4, 12, 10, 3) and a.dtype == jnp.float32


def test_a_crop_zooms_into_part_of_the_image():
  ramp = jnp.broadcast_to(jnp.arange(12.0)[:, None, None], (12, 12, 1))
  zoomed = jax.jit(augment.random_resized_crop, static_argnums=2)(jax.random.PRNGKey(3), ramp,
                                                                  0.7)
  rows = np.asarray(zoomed[:, 6, 0])
  assert np.all(np.diff(rows) > 0) and np.ptp(rows) < 11.0  # a stretched part of the ramp


def test_flip_mirrors_and_rotation_by_zero_keeps():
  image = _image()
  flip = jax.jit(augment.augment, static_argnums=2)  # one program, not op by op
  flipped = [flip(jax.random.PRNGKey(k), image, dataclasses.replace(OFF, flip=True))
             for k in range(8)]
  assert any(np.array_equal(f, image[:, ::-1]) for f in flipped)
  assert any(np.array_equal(f, image) for f in flipped)
  rotate = jax.jit(augment.rotate, static_argnums=2)
  np.testing.assert_allclose(rotate(jax.random.PRNGKey(0), image, 0.0), image, atol=1e-6)
  quarter = rotate(jax.random.PRNGKey(0), jnp.ones((9, 9, 1)), 45.0)
  np.testing.assert_allclose(quarter, 1.0, atol=1e-6)  # a constant image stays constant


def test_cutout_zeroes_one_square_of_the_given_side():
  image = jnp.ones((20, 20, 1))
  out = np.asarray(augment.cutout(jax.random.PRNGKey(4), image, 0.25))
  zero = np.argwhere(out[..., 0] == 0)
  assert len(zero) == 25  # a 5 × 5 square (side 0.25 · 20)
  assert np.ptp(zero[:, 0]) == 4 and np.ptp(zero[:, 1]) == 4


@pytest.mark.parametrize('overrides,match', [
    ({'augment.crop': 1.0}, r'augment.crop=1.0 must be in \[0, 1\)'),
    ({'augment.rotate': -5.0}, 'augment.rotate=-5.0 must be ≥ 0'),
    ({'augment.contrast': 1.5}, r'augment.contrast=1.5 must be in \[0, 1\)'),
])
def test_bad_settings_are_one_line_config_errors(overrides, match):
  with pytest.raises(ConfigError, match=match):
    hash_config(override(hashnet_digits.get_config(), overrides))
