"""Random views of images for label-free hashing: pure JAX functions of (key, image).

Images are float32 [H, W, C] in the network's input scale [−1, 1]. Each augmentation has a
strength; 0 (or False) switches it off and leaves the image as it is:

* `crop`: random resized crop, the kept area a fraction in [1 − crop, 1] of the image, aspect
  ratio in [3/4, 4/3], resized back to H × W (bilinear);
* `flip`: horizontal flip with probability 1/2 (off for digits and letters, whose mirror
  images are other symbols);
* `rotate`: a rotation by an angle uniform in [−rotate, rotate] degrees (bilinear, edges
  extended);
* `brightness`, `contrast`: x ↦ (x − m)·c + m + b with b uniform in ±brightness, c in
  1 ± contrast, m the image mean;
* `noise`: additive Gaussian noise of standard deviation `noise`;
* `cutout`: a square of side cutout·min(H, W) at a uniform position set to 0.

`views(key, images_BxHxWxC, settings)` gives two independent views of every image, all jitted
inside the train step (`loss.similarity='views'`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

AUGMENTATIONS = ('crop', 'flip', 'rotate', 'brightness', 'contrast', 'noise', 'cutout')


@dataclasses.dataclass(frozen=True)
class Strengths:
  """The strength of each augmentation (see the module docstring); 0 / False: off."""
  crop: float = 0.5
  flip: bool = False
  rotate: float = 10.0
  brightness: float = 0.2
  contrast: float = 0.2
  noise: float = 0.05
  cutout: float = 0.25


def random_resized_crop(key, image_HxWxC, strength: float):
  """A crop of area fraction U[1 − strength, 1] and aspect U[3/4, 4/3], resized to H × W."""
  height, width, _ = image_HxWxC.shape
  k_area, k_aspect, k_y, k_x = jax.random.split(key, 4)
  area = jax.random.uniform(k_area, minval=1.0 - strength, maxval=1.0)
  aspect = jnp.exp(jax.random.uniform(k_aspect, minval=jnp.log(3 / 4), maxval=jnp.log(4 / 3)))
  crop_h = jnp.clip(jnp.sqrt(area / aspect) * height, 1.0, height)
  crop_w = jnp.clip(jnp.sqrt(area * aspect) * width, 1.0, width)
  top = jax.random.uniform(k_y) * (height - crop_h)
  left = jax.random.uniform(k_x) * (width - crop_w)
  scale = jnp.stack([height / crop_h, width / crop_w])
  return jax.image.scale_and_translate(image_HxWxC, image_HxWxC.shape, (0, 1), scale,
                                       -jnp.stack([top, left]) * scale, 'linear',
                                       antialias=False)


def rotate(key, image_HxWxC, max_degrees: float):
  """Rotation about the centre by U[−max_degrees, max_degrees] (bilinear, edges extended)."""
  height, width, channels = image_HxWxC.shape
  angle = jnp.deg2rad(jax.random.uniform(key, minval=-max_degrees, maxval=max_degrees))
  ys, xs = jnp.meshgrid(jnp.arange(height) - (height - 1) / 2,
                        jnp.arange(width) - (width - 1) / 2, indexing='ij')
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  coords = [cos * ys - sin * xs + (height - 1) / 2, sin * ys + cos * xs + (width - 1) / 2]
  rotated = [jax.scipy.ndimage.map_coordinates(image_HxWxC[..., c], coords, order=1,
                                               mode='nearest') for c in range(channels)]
  return jnp.stack(rotated, axis=-1)


def cutout(key, image_HxWxC, fraction: float):
  """A square of side fraction·min(H, W), placed uniformly, set to 0."""
  height, width, _ = image_HxWxC.shape
  side = fraction * min(height, width)
  k_y, k_x = jax.random.split(key)
  top = jax.random.uniform(k_y) * (height - side)
  left = jax.random.uniform(k_x) * (width - side)
  ys, xs = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (ys >= top) & (ys < top + side) & (xs >= left) & (xs < left + side)
  return jnp.where(inside[..., None], 0.0, image_HxWxC)


def augment(key, image_HxWxC, strengths: Strengths):
  """One random view of one image (float32 [H, W, C]), the augmentations in the order of
  `AUGMENTATIONS`."""
  keys = dict(zip(AUGMENTATIONS, jax.random.split(key, len(AUGMENTATIONS))))
  x = image_HxWxC
  if strengths.crop > 0:
    x = random_resized_crop(keys['crop'], x, strengths.crop)
  if strengths.flip:
    x = jnp.where(jax.random.bernoulli(keys['flip']), x[:, ::-1], x)
  if strengths.rotate > 0:
    x = rotate(keys['rotate'], x, strengths.rotate)
  if strengths.brightness > 0 or strengths.contrast > 0:
    k_b, k_c = jax.random.split(keys['brightness'])
    shift = jax.random.uniform(k_b, minval=-1.0, maxval=1.0) * strengths.brightness
    factor = 1.0 + jax.random.uniform(k_c, minval=-1.0, maxval=1.0) * strengths.contrast
    mean = jnp.mean(x)
    x = (x - mean) * factor + mean + shift
  if strengths.noise > 0:
    x = x + strengths.noise * jax.random.normal(keys['noise'], x.shape)
  if strengths.cutout > 0:
    x = cutout(keys['cutout'], x, strengths.cutout)
  return x


# Copies for copy detection: transformations stronger than, or absent from, the training views.
COPY_STRENGTHS = Strengths(crop=0.7, flip=False, rotate=20.0, brightness=0.0, contrast=0.0,
                           noise=0.0, cutout=0.4)
COPY_LEVELS = 8  # grey levels per channel after the copy's quantisation (JPEG-like loss)


def quantise(image_HxWxC, levels: int):
  """Each value of [−1, 1] rounded to one of `levels` evenly spaced values."""
  step = 2.0 / (levels - 1)
  return jnp.round((jnp.clip(image_HxWxC, -1.0, 1.0) + 1.0) / step) * step - 1.0


@jax.jit
def copies(key, images_BxHxWxC):
  """The transformed copies of copy detection (float32 [B, H, W, C]): a crop keeping 30–100 %
  of the area, a rotation up to ±20°, quantisation to `COPY_LEVELS` values and an occluding
  square of 40 % of the side; deterministic in `key`."""
  keys = jax.random.split(key, images_BxHxWxC.shape[0])
  return jax.vmap(lambda k, x: quantise(augment(k, x, COPY_STRENGTHS), COPY_LEVELS))(
      keys, images_BxHxWxC)


def views(key, images_BxHxWxC, strengths: Strengths):
  """Two independent views of each image: (float32 [2B, H, W, C], view ids int32 [2B]); the
  views of image b are rows b and B + b, both with id b."""
  batch = images_BxHxWxC.shape[0]
  keys = jax.random.split(key, 2 * batch)
  images = jnp.concatenate([images_BxHxWxC, images_BxHxWxC])
  out = jax.vmap(lambda k, x: augment(k, x, strengths))(keys, images)
  ids = jnp.tile(jnp.arange(batch, dtype=jnp.int32), 2)
  return out, ids
