"""The search service behind the HTTP API, without the web framework (usable and tested alone).

`SearchService(workdir)` loads a finished train.py run: the model of its final checkpoint, its
`codes.npz` (the indexed database and the query gallery) and its data source (the images), then
the images added since (`hashjax.serve.store`). The database is the run's items (indices
0..N0−1) followed by the added ones, searched through a `HammingIndex`. Searches, adds and
image reads may come from many threads at once.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import jax
import numpy as np

from hashjax.data import manifest
from hashjax.hashing import job, update
from hashjax.retrieval import codes as codes_lib
from hashjax.retrieval import metrics
from hashjax.retrieval import search as search_lib
from hashjax.runtime.errors import SearchError
from hashjax.serve import store as store_lib
from hashjax.serve.encoder import BatchEncoder


class ServeError(ValueError):
  """A request the service cannot answer; `status` is the HTTP status (4xx)."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


def average_precision(dist_N: np.ndarray, relevant_N: np.ndarray, topk: int | None) -> float:
  """AP@topk of one query, ties by database index (`hashjax.retrieval.metrics` conventions)."""
  order = np.argsort(dist_N, kind='stable')[:topk]
  rel = np.asarray(relevant_N, bool)[order]
  return float(metrics.ranked_average_precision(rel[None], len(rel))[0])


def relevance(query_label, db_labels: np.ndarray) -> np.ndarray:
  """bool [N]: shares a label with the query (class id ≥ 0 equal, or multi-hot overlap)."""
  if np.ndim(query_label) == 0:
    return (np.asarray(db_labels) == query_label) & (query_label >= 0)
  return np.asarray(db_labels, np.int32) @ np.asarray(query_label, np.int32) > 0


def _shown(value, limit: int = 40) -> str:
  """repr(value), cut to `limit` characters (an error line never echoes a whole input)."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + '…'


def _layout(index: search_lib.HammingIndex, image_shape, step: int) -> store_lib.ItemLayout:
  """What the store keeps per item; `model` ties the stored codes to this run's final model
  (its step and a digest of the codes it indexed)."""
  labels = index.db_labels
  kind = 'none' if labels is None else 'class' if labels.ndim == 1 else 'multi-hot'
  digest = hashlib.sha256(np.ascontiguousarray(index.db_codes)).hexdigest()[:16]
  return store_lib.ItemLayout(image_shape, index.db_codes.shape[1], kind,
                              0 if kind != 'multi-hot' else labels.shape[1],
                              model=f'step {step}, codes.npz {digest}')


SERVABLE_CHANNELS = (1, 3)


def _indexed_run(workdir: str):
  """(config, final step, source, image shape [H, W, C], the HammingIndex of codes.npz) of a
  finished train.py run, checked against each other; the model is not loaded."""
  cfg, step = update.base_config(workdir)
  manifest.check(workdir, cfg.dataset, 'be served')
  source, _ = job.load_data(cfg)
  image_shape = tuple(np.asarray(source.images(np.zeros(1, np.int64))).shape[1:])
  if image_shape[-1] not in SERVABLE_CHANNELS:
    raise ServeError(f'the run in {workdir} was trained on images of {image_shape[-1]} '
                     'channels; the service takes uploads and shows pictures of 1 (grey) or 3 '
                     '(RGB)')
  index = search_lib.HammingIndex.load(os.path.join(workdir, search_lib.CODES_FILE))
  for name in ('db_indices', 'query_codes', 'query_indices'):
    if name not in index.extras:
      raise ServeError(f'{workdir}/codes.npz lacks {name}; rerun the run\'s train.py command')
  if index.bits != cfg.bits:
    raise ServeError(f'{workdir}/codes.npz holds {index.bits}-bit codes; the run\'s model gives '
                     f'{cfg.bits}: it is not this run\'s codes.npz (rerun its train.py command)')
  return cfg, step, source, image_shape, index


def store_layout(workdir: str) -> store_lib.ItemLayout:
  """The layout the service of run `workdir` stores its added items in (no model loaded: a
  store can be recovered whatever state the checkpoint is in)."""
  _, step, _, image_shape, index = _indexed_run(workdir)
  return _layout(index, image_shape, step)


class SearchService:
  """A finished run's database, searchable and growing; see the module docstring.

  Args:
    workdir: a finished train.py run (config.json, eval.json, its final checkpoint, codes.npz).
    max_topk: the largest topk a search may ask for.
    max_batch: images per model call when encoding.
  """

  def __init__(self, workdir: str, *, max_topk: int = 1000, max_batch: int = 64):
    self.cfg, self.step, self.source, self.image_shape, self.index = _indexed_run(workdir)
    _, state, _ = update.load_base(workdir, self.image_shape)
    self.num_original = len(self.index)
    labels = self.index.db_labels  # an added item's class must be one the run knows
    self._max_class = int(np.max(labels)) if labels is not None and labels.ndim == 1 else None
    self.store = store_lib.AddedStore(os.path.join(workdir, store_lib.FILE),
                                      _layout(self.index, self.image_shape, self.step))
    if len(self.store):
      self.index.add(self.store.codes, self.store.labels)
    self.max_topk = max_topk
    apply_fn = lambda variables, x: state.apply_fn(variables, x, train=False)  # noqa: E731
    self.encoder = BatchEncoder(apply_fn, jax.device_put(state.variables()), max_batch)
    self._add_lock = threading.Lock()
    self.workdir = workdir

  def warm_up(self) -> None:
    """Compiles the encoder (one image) and the search (topk ≤ 16) before the first request."""
    self.encoder.encode(self.item_image(0)[None])
    self.search_item(0, 1)

  def close(self) -> None:
    self.encoder.close()
    self.store.close()

  # -- reading --------------------------------------------------------------------------------
  @property
  def num_query(self) -> int:
    return len(self.index.extras['query_codes'])

  def stats(self) -> dict[str, Any]:
    """Sizes and settings: bits, database (all items), original, added, queries, topk limit."""
    labels = self.store.layout.label_kind
    return {'workdir': os.path.abspath(self.workdir), 'dataset': self.cfg.dataset,
            'step': self.step, 'bits': self.index.bits, 'database': len(self.index),
            'original': self.num_original, 'added': len(self.index) - self.num_original,
            'queries': self.num_query, 'labels': labels, 'max_topk': self.max_topk,
            'image_shape': list(self.image_shape)}

  def _check_index(self, i, size: int, what: str) -> int:
    if not isinstance(i, (int, np.integer)) or not 0 <= i < size:
      raise ServeError(f'{what} {_shown(i)} does not exist; accepted: 0..{size - 1}', 404)
    return int(i)

  def query_image(self, i: int) -> np.ndarray:
    """uint8 [H, W, C] of gallery query i."""
    i = self._check_index(i, self.num_query, 'query')
    return np.asarray(self.source.images(self.index.extras['query_indices'][[i]]))[0]

  def item_image(self, i: int) -> np.ndarray:
    """uint8 [H, W, C] of database item i (the run's, then the added ones)."""
    i = self._check_index(i, len(self.index), 'database item')
    if i < self.num_original:
      return np.asarray(self.source.images(self.index.extras['db_indices'][[i]]))[0]
    return self.store.images[i - self.num_original]

  # -- searching ------------------------------------------------------------------------------
  def search_query(self, i: int, topk: int, radius: int | None = None) -> dict[str, Any]:
    """Search with gallery query i (its code from codes.npz); see `_search`."""
    i = self._check_index(i, self.num_query, 'query')
    labels = self.index.extras.get('query_labels')
    return self._search(self.index.extras['query_codes'][i], topk, radius,
                        None if labels is None else labels[i], {'query': i})

  def search_item(self, i: int, topk: int, radius: int | None = None) -> dict[str, Any]:
    """Search with database item i as the query (it finds itself at distance 0)."""
    snapshot = self.index.snapshot()
    i = self._check_index(i, len(snapshot), 'database item')
    label = None if snapshot.db_labels is None else snapshot.db_labels[i]
    return self._search(snapshot.db_codes[i], topk, radius, label, {'item': i}, snapshot)

  def search_image(self, image_HxWxC: np.ndarray, topk: int, radius: int | None = None
                   ) -> dict[str, Any]:
    """Encode one uint8 image [H, W, C] (the run's shape) and search with its code."""
    self.check_topk(topk, radius)
    code = self.encoder.encode(image_HxWxC[None])[0]
    return self._search(code, topk, radius, None, {'image': 'upload'})

  def check_topk(self, topk, radius, num_database: int | None = None) -> None:
    """ServeError 422 unless 1 ≤ topk ≤ min(max_topk, N) and radius is None or 0..bits."""
    top = min(self.max_topk, len(self.index) if num_database is None else num_database)
    if not isinstance(topk, (int, np.integer)) or not 1 <= topk <= top:
      raise ServeError(f'topk={_shown(topk)} is out of range; accepted: 1..{top}', 422)
    if radius is not None and (not isinstance(radius, (int, np.integer)) or
                               not 0 <= radius <= self.index.bits):
      raise ServeError(f'radius={_shown(radius)} is out of range; accepted: '
                       f'0..{self.index.bits} (or none)', 422)

  def _search(self, code_P, topk, radius, label, query, snapshot=None) -> dict[str, Any]:
    """The topk nearest items (ties by index), those within `radius` when it is given, with
    distances, labels, relevance and the query's AP@map_topk when the query has a label."""
    snapshot = snapshot or self.index.snapshot()
    self.check_topk(topk, radius, len(snapshot))
    padded = min(len(snapshot), max(16, 1 << (int(topk) - 1).bit_length()))
    dist_1xT, index_1xT = snapshot.search(np.asarray(code_P)[None], padded)
    dist_T, index_T = dist_1xT[0, :topk], index_1xT[0, :topk]
    if radius is not None:
      keep = dist_T <= radius
      dist_T, index_T = dist_T[keep], index_T[keep]
    labels = snapshot.db_labels
    relevant, ap = None, None
    if label is not None and not np.any(np.asarray(label) >= 0 if np.ndim(label) == 0
                                        else np.asarray(label)):
      label = None  # an item added without a label (−1, or no flag set): no AP
    if label is not None and labels is not None:
      relevant = relevance(label, labels)
      dist_N = codes_lib.host_distances(np.asarray(code_P), snapshot.db_codes)
      ap = average_precision(dist_N, relevant, self.cfg.map_topk)
    results = [{'item': int(i), 'distance': int(d),
                'label': None if labels is None else _label_json(labels[i]),
                'relevant': None if relevant is None else bool(relevant[i]),
                'added': bool(i >= self.num_original)} for i, d in zip(index_T, dist_T)]
    return dict(query, label=None if label is None else _label_json(label), topk=int(topk),
                radius=radius, database=len(snapshot), ap=ap, ap_topk=self.cfg.map_topk,
                results=results)

  # -- adding ---------------------------------------------------------------------------------
  def parse_label(self, text: str | None):
    """A label of an added item from text: a class id ('3'), or for multi-hot data the ids of
    its labels ('1,4'); None/'' means no label."""
    kind = self.store.layout.label_kind
    if text is None or text == '':
      return None if kind == 'none' else (-1 if kind == 'class' else
                                         np.zeros(self.store.layout.num_labels, np.uint8))
    if kind == 'none':
      raise ServeError(f'label={_shown(text)}: this database has no labels; leave it out', 422)
    try:
      ids = [int(part) for part in text.split(',')]
    except ValueError:
      ids = None
    top = self._max_class if kind == 'class' else self.store.layout.num_labels - 1
    if not ids or any(not 0 <= i <= top for i in ids) or (kind == 'class' and len(ids) > 1):
      what = 'one class id' if kind == 'class' else 'label ids separated by commas'
      raise ServeError(f'label={_shown(text)} is not {what} in 0..{top}', 422)
    if kind == 'class':
      return ids[0]
    out = np.zeros(self.store.layout.num_labels, np.uint8)
    out[ids] = 1
    return out

  def add(self, images_MxHxWxC: np.ndarray, labels=None) -> list[int]:
    """Encodes the images, stores them (fsynced) and appends them to the index; returns their
    database indices. A full disk raises `ServeError` 507, a store folder that cannot be
    written 503; nothing is added then."""
    images = np.asarray(images_MxHxWxC, np.uint8)
    if images.ndim != 4 or images.shape[1:] != self.image_shape or not len(images):
      raise ServeError(f'images must be uint8 [M, {", ".join(map(str, self.image_shape))}] '
                       f'with M ≥ 1, got shape {images.shape}', 422)
    try:
      self.index.check_labels(labels, len(images))
    except SearchError as e:
      raise ServeError(str(e), 422) from None
    codes = self.encoder.encode(images)
    with self._add_lock:
      try:
        self.store.append(images, codes, labels)
      except store_lib.StoreReadOnly as e:
        raise ServeError(str(e), 503) from None
      except store_lib.StoreFull as e:
        raise ServeError(str(e), 507) from None
      start = len(self.index)
      self.index.add(codes, None if labels is None else np.asarray(labels))
    return list(range(start, start + len(images)))


def _label_json(label):
  label = np.asarray(label)
  return int(label) if label.ndim == 0 else [int(i) for i in np.flatnonzero(label)]
