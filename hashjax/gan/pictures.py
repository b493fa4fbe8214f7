"""Pictures of a GAN run besides its sample grid: the attribute grid (the values of one
attribute as rows and of another as columns, from one fixed noise vector), the interpolation
strip between two noise vectors, and the loss plot `losses.png`."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from hashjax.gan.config import GanConfig
from hashjax.gan.evaluation import generate_ema, pyplot_figure, save_figure
from hashjax.runtime import parallel
from hashjax.runtime import pictures as images_lib

INTERPOLATION_STEPS = 10


def attribute_grid_ids(sizes: tuple[int, ...]) -> np.ndarray:
  """int32 [R·C, A]: row r, column c of the grid holds value r of attribute 0 and value c of
  attribute 1 (C = 1 with one attribute); further attributes unknown (−1)."""
  rows, cols = sizes[0], (sizes[1] if len(sizes) > 1 else 1)
  ids = np.full((rows * cols, len(sizes)), -1, np.int32)
  ids[:, 0] = np.repeat(np.arange(rows), cols)
  if len(sizes) > 1:
    ids[:, 1] = np.tile(np.arange(cols), rows)
  return ids


def _noise(cfg: GanConfig, n: int, salt: int) -> np.ndarray:
  return np.asarray(jax.random.normal(jax.random.PRNGKey(cfg.seed + 4481 + salt), (n, cfg.nz)))


def _labelled(grid: np.ndarray, row_names, col_names, cell: int, gap: int) -> np.ndarray:
  """The grid with the row names on its left and the column names above it."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  left, top = 8 + 7 * max(map(len, row_names)), 20
  canvas = Image.new('RGB', (grid.shape[1] + left, grid.shape[0] + top), (255, 255, 255))
  canvas.paste(Image.fromarray(grid), (left, top))
  draw = ImageDraw.Draw(canvas)
  for r, name in enumerate(row_names):
    draw.text((4, top + gap + r * (cell + gap) + cell // 2 - 5), name, fill=(0, 0, 0))
  for c, name in enumerate(col_names):
    draw.text((left + gap + c * (cell + gap) + 2, 4), name[:cell // 6], fill=(0, 0, 0))
  return np.asarray(canvas)


def write_attribute_grid(path: str, state, cfg: GanConfig, names: tuple[str, ...],
                         values: tuple[tuple[str, ...], ...]) -> bool:
  """PNG of EMA samples, one fixed z for every cell: rows = the values of attribute 0
  (e.g. hair colour), columns = those of attribute 1 (eye colour), names in the margins.
  False when the disk is full."""
  sizes = tuple(map(len, values))
  ids = attribute_grid_ids(sizes)
  z = np.repeat(_noise(cfg, 1, 0), len(ids), axis=0)
  images = images_lib.to_uint8(parallel.to_host(generate_ema(state, z, ids)))
  scale, gap = max(1, 64 // cfg.image_size), 2
  grid = images_lib.make_grid(images, ncol=sizes[1] if len(sizes) > 1 else 1, gap=gap,
                              scale=scale)
  cols = values[1] if len(values) > 1 else (names[0],)
  return images_lib.save_png(path, _labelled(grid, values[0], cols, cfg.image_size * scale,
                                             gap))


def slerp(a_Z: np.ndarray, b_Z: np.ndarray, steps: int) -> np.ndarray:
  """[steps, Z]: spherical interpolation from a to b (both ends included)."""
  a, b = np.asarray(a_Z, np.float64), np.asarray(b_Z, np.float64)
  cos = np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0)
  omega = np.arccos(cos)
  t = np.linspace(0.0, 1.0, steps)[:, None]
  if omega < 1e-6:
    return ((1 - t) * a + t * b).astype(np.float32)
  return ((np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
          ).astype(np.float32)


def write_interpolation(path: str, state, cfg: GanConfig, labels_row=None) -> bool:
  """PNG strip of INTERPOLATION_STEPS EMA samples along the great circle between two fixed
  noise vectors (the same two at every checkpoint), all with the condition `labels_row`
  (a class id, an attribute row [A], or None). False when the disk is full."""
  ends = _noise(cfg, 2, 1)
  z = slerp(ends[0], ends[1], INTERPOLATION_STEPS)
  labels = None
  if labels_row is not None:  # [T] for a class id, [T, A] for an attribute row
    labels = np.repeat(np.asarray(labels_row, np.int32)[None], len(z), axis=0)
  images = images_lib.to_uint8(parallel.to_host(generate_ema(state, z, labels)))
  return images_lib.save_png(path, images_lib.make_grid(
      images, ncol=len(z), scale=max(1, 64 // cfg.image_size)))


def save_loss_plot(path: str, rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]],
                   title: str) -> bool:
  """losses.png: d_loss and g_loss (nats), D(x) and D(G(z)), and the held-out JSD estimate
  (nats, with its CI) when `eval_rows` has any, against the training step. False when there
  is nothing to plot, matplotlib is missing or the disk is full."""
  rows = [r for r in rows if 'd_loss' in r]
  eval_rows = [r for r in eval_rows if 'jsd' in r]
  panels = 3 if eval_rows else 2
  fig = pyplot_figure(path, figsize=(6, 2.4 * panels))
  if fig is None or not rows:
    return False
  axes = fig.subplots(panels, 1, sharex=True)
  steps = [r['step'] for r in rows]
  for key, label in (('d_loss', 'D loss'), ('g_loss', 'G loss')):
    axes[0].plot(steps, [r[key] for r in rows], '.-', label=label)
  axes[0].set(ylabel='nats', title=title)
  for key, label in (('d_real', 'D(x)'), ('d_fake', 'D(G(z))')):
    axes[1].plot(steps, [r[key] for r in rows], '.-', label=label)
  axes[1].set(ylabel='mean output', ylim=(-0.02, 1.02))
  if eval_rows:
    eval_steps = [r['step'] for r in eval_rows]
    axes[2].fill_between(eval_steps, [r['jsd_ci_low'] for r in eval_rows],
                         [r['jsd_ci_high'] for r in eval_rows], alpha=0.3, label='95% CI')
    axes[2].plot(eval_steps, [r['jsd'] for r in eval_rows], 'o-', label='held-out JSD')
    axes[2].axhline(np.log(2), color='gray', ls=':', label='log 2')
    axes[2].set(ylabel='JSD (nats)')
  for ax in axes:
    ax.legend(fontsize=8)
  axes[-1].set(xlabel='training step')
  fig.tight_layout()
  return save_figure(fig, path)
