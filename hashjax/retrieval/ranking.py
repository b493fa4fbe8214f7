"""Host-side retrieval statistics (numpy, float64) from what the device computed per chunk.

* `histograms`: per query, how many items (and relevant items) lie at each distance
  (numpy's bincount of uint16 keys, cheaper per pair than XLA:CPU's scatter).
* `order_by_distance` (the top-k's final order) and `full_index_ap` (AP over the whole
  ranking with ties by index): numpy's stable argsort of uint8/uint16 distances is a radix
  (counting) sort, linear in N; XLA:CPU has only comparison sorts (the costs of each:
  docs/PERFORMANCE.md).
* `tie_aware`: AP@k and P@k under the 'best', 'worst' and 'expected' tie orders, from the
  histograms alone.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln


def level_counts(key_QxN: np.ndarray, bits: int, levels: int) -> np.ndarray:
  """Items per (level, distance) of each query, int64 [Q, levels, bits + 1].

  key = min(distance, bits + 1) + (bits + 2)·level (uint16 or int32 [Q, N], level <
  `levels`: relevant or not, or a grade); distance bits + 1 holds the padding rows and is
  dropped.
  """
  bins = bits + 2
  hist = np.stack([np.bincount(row, minlength=levels * bins) for row in key_QxN])
  return hist.reshape(len(hist), levels, bins)[:, :, :bits + 1]


def histograms(key_QxN: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
  """(count, relcount) int64 [Q, R], R = bits + 1: items and relevant items at each distance,
  from keys with level = relevant (see `level_counts`)."""
  counts = level_counts(key_QxN, bits, 2)
  return counts.sum(axis=1), counts[:, 1]


def order_by_distance(dist_QxT: np.ndarray) -> np.ndarray:
  """Stable ascending order of each row, int64 [Q, T]: items given in index order come out
  by (distance, index). For uint8/uint16 distances numpy uses a radix sort."""
  return np.argsort(dist_QxT, axis=1, kind='stable')


def full_index_ap(dist_QxN: np.ndarray, rel_QxN: np.ndarray) -> np.ndarray:
  """AP float64 [Q] over the whole ranking (ascending distance, ties by index).

  dist: small unsigned ints [Q, N] (uint8/uint16: numpy's stable argsort is then a radix
  sort); rel: 0/1 [Q, N]. With p_j the rank of the j-th relevant item, AP = (1/m) Σ_j j / p_j
  (0 for a query with m = 0 relevant items).
  """
  q, n = dist_QxN.shape
  order_QxN = order_by_distance(dist_QxN)
  order_QxN += n * np.arange(q)[:, None]  # flat indices: np.take beats take_along_axis
  flat = np.flatnonzero(np.take(np.ascontiguousarray(rel_QxN).reshape(-1), order_QxN))
  rows, cols = np.divmod(flat, n)  # row-major: each row's relevant ranks in order
  num_Q = np.bincount(rows, minlength=q)
  starts_Q = np.cumsum(num_Q) - num_Q
  j = np.arange(1, len(rows) + 1) - starts_Q[rows]
  ap_sum_Q = np.bincount(rows, weights=j / (cols + 1.0), minlength=q)
  return np.where(num_Q > 0, ap_sum_Q / np.maximum(num_Q, 1), 0.0)


def harmonic(n: int) -> np.ndarray:
  """H[0..n] in float64: H[i] = Σ_{j≤i} 1/j."""
  return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def _log_choose(n, k):
  return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)


def tie_aware(count_QxR, relcount_QxR, topk: int, harmonic) -> dict[str, np.ndarray]:
  """AP@topk and P@topk per query for ties 'best', 'worst', 'expected' (float64 [Q] each).

  Let t be the distance bucket that the cutoff topk falls in, m of its n items among the first
  topk ranks, x of them relevant (r relevant in the bucket). Buckets before t are whole; their
  tie order only moves relevant items within them, so relevant first (last) maximises
  (minimises) their sum Σ P@i·rel_i. Within t, AP@topk = (S + s_t(x)) / (a + x), a the relevant
  items before t: 'best' is the maximum over every feasible x with the x relevant items first,
  'worst' the minimum with them last, and 'expected' the exact mean over uniformly random
  orders of every bucket: X is hypergeometric(n, r, m) and the in-bucket sums follow McSherry &
  Najork (2008), eq. for tied groups:
  E[Σ_{p≤n} rel_p·hits_p/(b+p)] = αβn + α(a + 1 − β(b + 1))(H[b+n] − H[b]),
  α = r/n, β = (r−1)/(n−1), b items (a relevant) ranked before the group.
  """
  H = harmonic
  count = count_QxR.astype(np.int64)
  relcount = relcount_QxR.astype(np.int64)
  upto = np.cumsum(count, axis=1)
  before, rel_before = upto - count, np.cumsum(relcount, axis=1) - relcount

  def group_sums(n, r, b, a):
    best = r - (b - a) * (H[b + r] - H[b])
    worst = r - (b + n - r - a) * (H[b + n] - H[b + n - r])
    alpha = r / np.maximum(n, 1)
    beta = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1), 0.0)
    expected = alpha * beta * n + alpha * (a + 1 - beta * (b + 1)) * (H[b + n] - H[b])
    return best, worst, expected

  t_Q = np.argmax(upto >= topk, axis=1)
  prior_QxR = np.arange(count.shape[1])[None, :] < t_Q[:, None]
  sums = [np.sum(np.where(prior_QxR, s, 0.0), axis=1)
          for s in group_sums(count, relcount, before, rel_before)]
  take = lambda a: np.take_along_axis(a, t_Q[:, None], axis=1)  # [Q, 1]
  b, a, n, r = take(before), take(rel_before), take(count), take(relcount)
  m = topk - b
  x_lo, x_hi = np.maximum(0, m - (n - r)), np.minimum(m, r)
  x = np.arange(int(x_hi.max()) + 1)[None, :]
  feasible = (x >= x_lo) & (x <= x_hi)
  xs = np.where(feasible, x, x_lo)  # keeps every index below in range
  denom = a + xs
  safe = lambda num: np.where(denom > 0, num / np.maximum(denom, 1), 0.0)
  best_x = safe(sums[0][:, None] + xs - (b - a) * (H[b + xs] - H[b]))
  worst_x = safe(sums[1][:, None] + xs - (b + m - xs - a) * (H[b + m] - H[b + m - xs]))
  alpha = xs / np.maximum(m, 1)
  beta = np.where(m > 1, (xs - 1) / np.maximum(m - 1, 1), 0.0)
  in_group = alpha * beta * m + alpha * (a + 1 - beta * (b + 1)) * (H[b + m] - H[b])
  expected_x = safe(sums[2][:, None] + in_group)
  log_p = _log_choose(r, xs) + _log_choose(n - r, m - xs) - _log_choose(n, m)
  p_x = np.where(feasible, np.exp(log_p), 0.0)
  return {
      'ap_best': np.max(np.where(feasible, best_x, -np.inf), axis=1),
      'ap_worst': np.min(np.where(feasible, worst_x, np.inf), axis=1),
      'ap_expected': np.sum(p_x * expected_x, axis=1) / np.sum(p_x, axis=1),
      'p_best': (a + x_hi)[:, 0] / topk,
      'p_worst': (a + x_lo)[:, 0] / topk,
      'p_expected': (a + m * r / np.maximum(n, 1))[:, 0] / topk,
  }
