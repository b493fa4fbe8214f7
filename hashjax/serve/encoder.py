"""Batched encoding for the service: images from concurrent requests share one model call.

One worker thread takes every request waiting in the queue (up to `max_batch` images), pads
the batch to the next power of two (so at most log2(max_batch)+1 programs are compiled) and
runs the jitted encoder once; each request gets its own rows back.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading

import jax
import numpy as np

from hashjax.data import base as data_base
from hashjax.retrieval import codes as codes_lib


def bucket(size: int) -> int:
  """The padded batch size for `size` images: the next power of two."""
  return 1 << max(0, int(size) - 1).bit_length()


class BatchEncoder:
  """`encode(images uint8 [M, H, W, C])` → packed codes uint8 [M, ceil(K/8)], from any thread.

  Args:
    apply_fn: (variables, images float32 [B, H, W, C] in [−1, 1]) → hash outputs z [B, K]
      (the model in evaluation mode).
    variables: the model's variables.
    max_batch: images per model call (a larger request is split).
  """

  def __init__(self, apply_fn, variables, max_batch: int = 64):
    self._fn = jax.jit(apply_fn)
    self._variables = variables
    self.max_batch = bucket(max_batch)
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._work, name='hashjax-encoder', daemon=True)
    self._thread.start()

  def encode(self, images_MxHxWxC: np.ndarray) -> np.ndarray:
    """Packed codes uint8 [M, P] of the images, in order; blocks until they are computed."""
    images = np.asarray(images_MxHxWxC, np.uint8)
    futures = []
    for start in range(0, len(images), self.max_batch):
      future = concurrent.futures.Future()
      self._queue.put((images[start:start + self.max_batch], future))
      futures.append(future)
    return np.concatenate([f.result() for f in futures]) if futures else np.zeros(
        (0, 0), np.uint8)

  def close(self) -> None:
    self._queue.put(None)
    self._thread.join(timeout=10)

  def _take(self) -> list | None:
    first = self._queue.get()
    if first is None:
      return None
    taken, size = [first], len(first[0])
    while size < self.max_batch:
      try:
        item = self._queue.get_nowait()
      except queue.Empty:
        break
      if item is None:
        self._queue.put(None)
        break
      if size + len(item[0]) > self.max_batch:
        self._queue.put(item)  # next round (the order of requests does not matter)
        break
      taken.append(item)
      size += len(item[0])
    return taken

  def _work(self) -> None:
    while (taken := self._take()) is not None:
      try:
        images = np.concatenate([images for images, _ in taken])
        padded = np.concatenate([images, np.repeat(images[-1:], bucket(len(images)) -
                                                   len(images), axis=0)])
        z = self._fn(self._variables, data_base.to_float(padded))
        packed = codes_lib.pack_codes(np.asarray(codes_lib.sign_codes(z))[:len(images)])
      except Exception as e:  # pylint: disable=broad-except  # reaches the requests
        for _, future in taken:
          future.set_exception(e)
        continue
      start = 0
      for part, future in taken:
        future.set_result(packed[start:start + len(part)])
        start += len(part)
