"""The model as an encoder: hash-layer outputs z of a source's items, in batches sharded over
the devices (inference mode)."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh

from hashjax.data import base as data_base
from hashjax.data.base import Source
from hashjax.runtime import parallel


@functools.lru_cache(maxsize=None)
def _encode_fn(mesh: Mesh):
  def encode_batch(state, images):
    return state.apply_fn(state.variables(), images, train=False)
  repl = parallel.replicated(mesh)
  return jax.jit(encode_batch, in_shardings=(repl, parallel.data_sharding(mesh)),
                 out_shardings=repl)


def encode(state, source: Source, indices: np.ndarray, batch_size: int,
           mesh: Mesh | None = None) -> np.ndarray:
  """Hash-layer outputs z [len(indices), bits] (float32) for source items.

  Batches (rounded up to a multiple of the devices) are sharded over the mesh's data axis;
  each process loads only its slice of every batch, and every process gets all outputs.
  """
  mesh = mesh or parallel.make_mesh()
  unit = mesh.shape[parallel.DATA] * jax.process_count()
  batch_size = -(-batch_size // unit) * unit
  encode_batch = _encode_fn(mesh)
  mine = parallel.process_slice(batch_size)
  out = []
  for start in range(0, len(indices), batch_size):
    chunk = indices[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk))])
    images = parallel.global_batch({'image': data_base.to_float(source.images(padded[mine]))},
                                   mesh)['image']
    out.append(parallel.to_host(encode_batch(state, images))[:len(chunk)])
  return np.concatenate(out)
