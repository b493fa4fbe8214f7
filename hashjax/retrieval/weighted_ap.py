"""Weighted mAP (graded relevance) under the tie orders of `hashjax.retrieval.graded`, on the host.

WAP@k = (1/n⁺) Σ_{p≤k} [rel_p > 0]·ACG@p, ACG@p = (1/p) Σ_{i≤p} rel_i, with n⁺ the items of
relevance > 0 among the first k ranks (0 when there are none); Zhao et al., CVPR 2015.

From counts of items per (relevance g, Hamming distance): groups of tied items before the
cutoff's group are whole, so their sums are fixed once the order inside each is (best:
relevance descending; worst: zeros first, then ascending; expected: the mean over random
orders, in closed form from the group's n items, P positives and relevance total R). The
cutoff's group contributes m items, x of them positive: for each feasible x the sums follow
(best: the x highest positives first; worst: m − x zeros, then the x lowest positives
ascending; expected: x hypergeometric, the taken positives a uniform sample), and n⁺ = a + x.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

# Σ_{t<c} (C + g(t + 1)) / (s + t) = C·h + g·(c − (s − 1)·h),  h = H[s + c − 1] − H[s − 1]:
# c items of relevance g at ranks s.. s + c − 1, after a relevance total C.


def _run(H, C, g, s, c):
  h = H[np.maximum(s + c - 1, 0)] - H[np.maximum(s - 1, 0)]
  return np.where(c > 0, C * h + g * (c - (s - 1) * h), 0.0)


def _ordered(H, total_before, start, count_xG, grades):
  """Σ over runs of positives in the order `grades` (ranks from `start`): float64 [...]."""
  out, C, s = 0.0, total_before, start
  for g in grades:
    c = count_xG[..., g]
    out = out + _run(H, C, g, s, c)
    C, s = C + g * c, s + c
  return out


def _log_choose(n, k):
  return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)


def weighted_ap(count_QxGxR: np.ndarray, topk: int, H: np.ndarray, mode: str) -> np.ndarray:
  """WAP@topk float64 [Q] for ties 'best', 'worst' or 'expected' (see the module docstring);
  H: harmonic numbers H[0..N]."""
  count = count_QxGxR.astype(np.int64)
  grades = np.arange(count.shape[1])
  size, total = count.sum(axis=1), np.einsum('qgr,g->qr', count, grades)
  positive = size - count[:, 0]
  upto = np.cumsum(size, axis=1)
  before, total_before = upto - size, np.cumsum(total, axis=1) - total
  pos_before = np.cumsum(positive, axis=1) - positive
  t = np.argmax(upto >= topk, axis=1)
  full = np.arange(size.shape[1])[None, :] < t[:, None]
  up, down = grades[:0:-1], grades[1:]  # positive grades, descending / ascending
  if mode == 'best':
    sums = _ordered(H, total_before, before + 1, np.moveaxis(count, 1, 2), up)
  elif mode == 'worst':
    sums = _ordered(H, total_before, before + count[:, 0] + 1, np.moveaxis(count, 1, 2), down)
  else:
    sums = _expected(H, size, positive, total, before, total_before, size)
  fixed = np.sum(np.where(full, sums, 0.0), axis=1)[:, None]  # [Q, 1]
  at = lambda a: np.take_along_axis(a, t[:, None], axis=1)  # [Q, 1]
  n, p, r, b, tb, a = (at(v) for v in (size, positive, total, before, total_before, pos_before))
  m = topk - b
  x_lo, x_hi = np.maximum(0, m - (n - p)), np.minimum(m, p)
  x = np.arange(int(x_hi.max()) + 1)[None, :]
  feasible = (x >= x_lo) & (x <= x_hi)
  x = np.where(feasible, x, x_lo)  # [Q, X]
  cut_counts = np.take_along_axis(count, t[:, None, None], axis=2)[:, :, 0]  # [Q, G]
  if mode in ('best', 'worst'):
    order = up if mode == 'best' else down
    taken = np.zeros(x.shape + (len(grades),), np.int64)
    left = x.copy()
    for g in order:  # the x highest (best) or lowest (worst) positives
      taken[..., g] = np.minimum(left, cut_counts[:, None, g])
      left = left - taken[..., g]
    start = b + 1 if mode == 'best' else b + (m - x) + 1
    cut = _ordered(H, tb, start, taken, order)
  else:
    cut = _expected_cut(H, x, m, p, r, b, tb)
  denom = a + x
  value = np.where(denom > 0, (fixed + cut) / np.maximum(denom, 1), 0.0)
  if mode == 'best':
    return np.max(np.where(feasible, value, -np.inf), axis=1)
  if mode == 'worst':
    return np.min(np.where(feasible, value, np.inf), axis=1)
  log_p = _log_choose(p, x) + _log_choose(n - p, m - x) - _log_choose(n, m)
  prob = np.where(feasible, np.exp(log_p), 0.0)
  return np.sum(prob * value, axis=1) / np.sum(prob, axis=1)


def _expected(H, n, p, r, b, total_before, m):
  """E[Σ_{j≤m} [rel>0]·S_j/(b + j)] over random orders of a whole group of n items."""
  h = H[b + m] - H[b]
  safe_n = np.maximum(n, 1)
  pair = np.where(n > 1, r * (p - 1) / np.maximum(n * (n - 1), 1), 0.0)
  return ((p / safe_n) * total_before + r / safe_n) * h + pair * (m - (b + 1) * h)


def _expected_cut(H, x, m, p, r, b, total_before):
  """The same for the m taken items of the cutoff's group, x of them positive: [Q, X]."""
  h = H[b + m] - H[b]
  mean = np.where(p > 0, r / np.maximum(p, 1), 0.0)
  share = x / np.maximum(m, 1)
  pair = np.where(m > 1, x * (x - 1) / np.maximum(m * (m - 1), 1), 0.0)
  return share * (total_before + mean) * h + pair * mean * (m - (b + 1) * h)
