"""Retrieval at scale: hashjax's metric paths and top-k against argsort baselines and faiss.

Not part of the test suite. Every table of docs/retrieval.md in one run (~15 minutes on a
2-core CPU; RUN is a trained 64-bit run whose codes.npz seeds the learned-like databases):

  python benchmarks/retrieval.py --mode=all --codes=RUN/codes.npz

Single tables:

  python benchmarks/retrieval.py --mode=paths --queries=2000 --database=50000  # ns per pair
  python benchmarks/retrieval.py --queries=5000 --database=100000 --topk=1000  # mAP@1000
  python benchmarks/retrieval.py --mode=topk --queries=1000 --database=1000000 --topk=100
  python benchmarks/retrieval.py --mode=mih --codes=RUN/codes.npz --database=10000000 \
      --queries=1000 --topk=100      # multi-index hashing vs faiss and the jax scan
  python benchmarks/retrieval.py --mode=scaling --queries=1000 --database=50000

On a multi-core CPU, XLA_FLAGS=--xla_force_host_platform_device_count=<cores> gives JAX one
device per core, so query chunks (and their sorts, which XLA runs on one thread) go in
parallel. Codes are clustered like trained hash codes: 10 classes, a random center per
class, each bit flipped with probability --flip, so many items share a distance.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np


def clustered_codes(num: int, bits: int, classes: int, flip: float, seed: int):
  """±1 codes int8 [num, bits] and class ids [num]."""
  rng = np.random.default_rng(seed)
  centers = np.where(np.random.default_rng(1234).random((classes, bits)) > 0.5, 1, -1)
  labels = rng.integers(0, classes, num)
  flips = rng.random((num, bits)) < flip
  return np.where(flips, -centers[labels], centers[labels]).astype(np.int8), labels


def baseline_map(query_codes, db_codes, query_labels, db_labels, topk):
  """The usual research-code loop: full argsort per query (stable, ties by index)."""
  bits = db_codes.shape[1]
  db = db_codes.astype(np.float32)
  aps = []
  for q, label in zip(query_codes.astype(np.float32), query_labels):
    hamming = 0.5 * (bits - db @ q)
    ind = np.argsort(hamming, kind='stable')[:topk]
    rel = (db_labels[ind] == label).astype(np.float64)
    hits = np.cumsum(rel)
    r = rel.sum()
    aps.append(0.0 if r == 0 else float(np.sum(rel * hits / np.arange(1, len(rel) + 1)) / r))
  return float(np.mean(aps))


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, *args, **kwargs):
  start = time.perf_counter()
  value = fn(*args, **kwargs)
  return value, time.perf_counter() - start


def run_map(args, num_query, num_database, baseline=True):
  from hashjax.retrieval import metrics  # pylint: disable=g-import-not-at-top
  qc, ql = clustered_codes(num_query, args.bits, 10, args.flip, 1)
  dc, dl = clustered_codes(num_database, args.bits, 10, args.flip, 2)
  qp, dp = np.packbits(qc > 0, 1), np.packbits(dc > 0, 1)
  metrics.mean_average_precision(qp[:8], dp, ql[:8], dl, topk=args.topk)  # compile
  ours, t_ours = timed(metrics.mean_average_precision, qp, dp, ql, dl, topk=args.topk)
  line = f'Q={num_query} N={num_database} bits={args.bits} topk={args.topk}: hashjax {t_ours:.2f}s'
  line += f' mAP={ours:.6f}'
  if baseline:
    nb = min(args.baseline_queries or num_query, num_query)
    base, t_base = timed(baseline_map, qc[:nb], dc, ql[:nb], dl, args.topk)
    t_base_all = t_base * num_query / nb
    ours_nb = metrics.mean_average_precision(qp[:nb], dp, ql[:nb], dl, topk=args.topk)
    line += (f' | argsort baseline {t_base_all:.2f}s'
             f'{"" if nb == num_query else f" (extrapolated from {nb} queries)"}'
             f' ratio {t_base_all / t_ours:.1f}x |mAP diff|={abs(base - ours_nb):.2e}')
  print(line + f' | peak RSS {peak_rss_gb():.2f} GB', flush=True)
  return t_ours


def run_paths(args, num_query, num_database, only_map=False):
  """ns per query-item pair of every metric path (only mAP@k with `only_map`), and the argsort
  baselines of the two index-tie ones (timed on --baseline_queries queries and scaled, when
  set). Each path is timed twice after compiling; the ratio uses the second call."""
  from hashjax.retrieval import metrics  # pylint: disable=g-import-not-at-top
  qc, ql = clustered_codes(num_query, args.bits, 10, args.flip, 1)
  dc, dl = clustered_codes(num_database, args.bits, 10, args.flip, 2)
  qp, dp = np.packbits(qc > 0, 1), np.packbits(dc > 0, 1)
  k = args.topk
  paths = {
      f'mAP@{k}, ties by index': lambda q, l: metrics.mean_average_precision(
          q, dp, l, dl, topk=k),
      f'mAP@{k}, all four tie orders': lambda q, l: metrics.map_tie_summary(
          q, dp, l, dl, topk=k),
      'mAP over the whole database, ties by index': lambda q, l: metrics.mean_average_precision(
          q, dp, l, dl),
      'PR curve (every radius)': lambda q, l: metrics.precision_recall_curve(q, dp, l, dl),
      'precision within radius 2': lambda q, l: metrics.precision_at_radius(q, dp, l, dl),
  }
  if only_map:
    paths = dict(list(paths.items())[:1])
  baselines = {f'mAP@{k}, ties by index': k, 'mAP over the whole database, ties by index': None}
  pairs = num_query * num_database
  print(f'metric paths, Q={num_query} N={num_database} bits={args.bits}:', flush=True)
  for name, fn in paths.items():
    fn(qp[:8], ql[:8])  # compile
    first, t_first = timed(fn, qp, ql)
    _, t_ours = timed(fn, qp, ql)
    line = (f'  {name}: {t_ours:.3f} s, {t_ours / pairs * 1e9:.2f} ns/pair '
            f'(first call {t_first:.3f} s)')
    if name in baselines and not args.no_baseline:
      nb = min(args.baseline_queries or num_query, num_query)
      base, t_base = timed(baseline_map, qc[:nb], dc, ql[:nb], dl, baselines[name])
      t_base *= num_query / nb
      ours_nb = fn(qp[:nb], ql[:nb])
      line += (f' | argsort baseline {t_base:.2f} s{"" if nb == num_query else " (scaled)"}:'
               f' {t_base / t_ours:.1f}x (first call {t_base / t_first:.1f}x),'
               f' |mAP diff| {abs(base - ours_nb):.1e}')
    print(line, flush=True)


def _hashjax_topk(args, qp, dp):
  """(distances, indices, seconds) of hamming_topk, warmed up at the timed chunk size."""
  from hashjax.retrieval.search import hamming_topk  # pylint: disable=g-import-not-at-top
  hamming_topk(qp, dp, args.topk)
  (dist, idx), seconds = timed(hamming_topk, qp, dp, args.topk)
  return dist, idx, seconds


def _topk_codes(args):
  qc, _ = clustered_codes(args.queries, args.bits, 10, args.flip, 1)
  dc, _ = clustered_codes(args.database, args.bits, 10, args.flip, 2)
  if args.uniform:
    rng = np.random.default_rng(0)
    qc = np.where(rng.random(qc.shape) > 0.5, 1, -1)
    dc = np.where(rng.random(dc.shape) > 0.5, 1, -1)
  return np.packbits(qc > 0, 1), np.packbits(dc > 0, 1)


def _one_core_seconds(args) -> float:
  """hamming_topk's time in a child process pinned to one core (XLA sizes its thread pool
  from the machine, so pinning is how it gets one thread's worth of CPU)."""
  argv = [sys.executable, __file__, '--mode=topk', '--hashjax_only', f'--queries={args.queries}',
          f'--database={args.database}', f'--bits={args.bits}', f'--topk={args.topk}',
          f'--flip={args.flip}'] + (['--uniform'] if args.uniform else [])
  out = subprocess.run(['taskset', '-c', '0', *argv], check=True, capture_output=True,
                       text=True).stdout
  return float(out.strip().splitlines()[-1].split()[-1])


def run_topk(args):
  qp, dp = _topk_codes(args)
  dist, idx, t_ours = _hashjax_topk(args, qp, dp)
  if args.hashjax_only:
    print(f'seconds {t_ours}')
    return
  print(f'hamming_topk Q={args.queries} N={args.database} bits={args.bits} topk={args.topk}'
        f'{" (uniform codes)" if args.uniform else ""}: {t_ours:.2f}s on every core '
        f'({args.queries / t_ours:.0f} queries/s)', flush=True)
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('faiss not installed (pip install faiss-cpu): no comparison')
    return
  ours = {1: _one_core_seconds(args), 2: t_ours}
  for threads in (1, 2):
    faiss.omp_set_num_threads(threads)
    index = faiss.IndexBinaryFlat(8 * dp.shape[1])
    index.add(dp)
    (fdist, fidx), t_faiss = timed(index.search, qp, args.topk)
    print(f'  {threads} thread(s): hashjax {ours[threads]:.2f}s, faiss IndexBinaryFlat '
          f'{t_faiss:.2f}s: hashjax = {t_faiss / ours[threads]:.2f} x faiss; same distances '
          f'{np.array_equal(fdist, dist)}, same neighbours {np.array_equal(fidx, idx)}',
          flush=True)


def learned_like(codes_path: str, num: int, flips: int, seed: int):
  """(database [num, P], queries [Q, P]) packed: the run's database codes, each copied with
  `flips` random bit flips until there are `num`; the queries are the run's query codes."""
  with np.load(codes_path) as f:
    base, queries, bits = f['db_codes'], f['query_codes'], int(f['bits'])
  rng = np.random.default_rng(seed)
  db = base[rng.integers(0, len(base), num)]
  rows = np.repeat(np.arange(num), flips)
  cols = rng.integers(0, bits, num * flips)
  flip = np.zeros_like(db)
  np.bitwise_xor.at(flip, (rows, cols // 8), (128 >> (cols % 8)).astype(np.uint8))
  return db ^ flip, queries, bits


def run_mih(args):
  """MIH against faiss IndexBinaryFlat (1 and 2 threads) and the jax scan, same results."""
  import faiss  # pylint: disable=g-import-not-at-top

  from hashjax.retrieval.search import HammingIndex  # pylint: disable=g-import-not-at-top
  for kind in ('learned-like', 'uniform'):
    if kind == 'learned-like':
      db, queries, bits = learned_like(args.codes, args.database, args.flips, 0)
    else:
      rng = np.random.default_rng(1)  # uniform bytes (no float temporaries: RSS is reported)
      bits = args.bits
      db = rng.integers(0, 256, (args.database, bits // 8), dtype=np.uint8)
      queries = rng.integers(0, 256, (args.queries, bits // 8), dtype=np.uint8)
    queries = queries[:args.queries]
    index = HammingIndex(db, bits, backend='mih')
    # Builds the tables and compiles the fallback scan at the timed call's chunk size.
    _, t_build = timed(index.search, queries[:64], args.topk)
    before = index.mih_fallbacks
    (d_mih, i_mih), t_mih = timed(index.search, queries, args.topk)
    tables = index._cache['mih'][1]  # pylint: disable=protected-access
    size = sum(a.nbytes for a in tables.arrays().values()) / 2**20
    line = (f'{kind} N={len(db)} bits={bits} Q={len(queries)} k={args.topk}: mih '
            f'{t_mih * 1e3 / len(queries):.3f} ms/query (m={tables.m}, {len(tables.codes)} '
            f'distinct codes, {index.mih_fallbacks - before} of {len(queries)} queries fell back; '
            f'tables {size:.0f} MiB built in {t_build:.1f} s)')
    for threads in (1, 2):
      faiss.omp_set_num_threads(threads)
      flat = faiss.IndexBinaryFlat(bits)
      flat.add(db)
      (d_f, i_f), t_f = timed(flat.search, queries, args.topk)
      line += (f' | faiss {threads} thread(s) {t_f * 1e3 / len(queries):.3f} ms/query, mih '
               f'{t_f / t_mih:.1f}x, same distances {np.array_equal(d_f, d_mih)}')
    scan = HammingIndex(db, bits)
    scan.search(queries[:64], args.topk)  # compiles the timed call's chunk size
    (d_j, i_j), t_j = timed(scan.search, queries, args.topk)
    line += (f' | jax scan {t_j * 1e3 / len(queries):.3f} ms/query, identical to mih '
             f'{np.array_equal(d_j, d_mih) and np.array_equal(i_j, i_mih)}')
    print(line + f' | peak RSS {peak_rss_gb():.2f} GB', flush=True)


def run_all(args):
  """Every table of docs/retrieval.md in one run, at its sizes."""
  sized = lambda **kw: argparse.Namespace(**{**vars(args), **kw})
  run_paths(sized(topk=1000), 2000, 50_000)
  run_paths(sized(topk=1000), 5000, 100_000, only_map=True)
  run_topk(sized(queries=1000, database=1_000_000, topk=100, uniform=False))
  for database in (1_000_000, 10_000_000):
    run_mih(sized(queries=1000, database=database, topk=100))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--mode', choices=('all', 'map', 'paths', 'scaling', 'topk', 'mih'),
                      default='map', help='all: the paths at Q=2000 N=50000, mAP@1000 at '
                      'Q=5000 N=100000, topk at Q=1000 N=1M, mih at N=1M and 10M (needs --codes)')
  parser.add_argument('--codes', default=None,
                      help='mih: a codes.npz of a trained run (its database codes are copied '
                      'with --flips random bit flips to reach --database)')
  parser.add_argument('--flips', type=int, default=2, help='mih: bit flips per copy')
  parser.add_argument('--queries', type=int, default=5000)
  parser.add_argument('--database', type=int, default=100_000)
  parser.add_argument('--bits', type=int, default=64)
  parser.add_argument('--topk', type=int, default=None,
                      help='the cutoff: mAP@topk (default 1000), or neighbours per query for '
                      '--mode=topk (default 100)')
  parser.add_argument('--flip', type=float, default=0.2, help='bit flip probability')
  parser.add_argument('--uniform', action='store_true', help='topk: uniform random codes')
  parser.add_argument('--baseline_queries', type=int, default=0,
                      help='time the baseline on this many queries and extrapolate (0: all)')
  parser.add_argument('--no_baseline', action='store_true')
  parser.add_argument('--hashjax_only', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.topk is None:
    args.topk = 100 if args.mode == 'topk' else 1000
  import jax  # pylint: disable=g-import-not-at-top
  print(f'devices: {jax.devices()}', flush=True)
  if args.mode in ('all', 'mih') and not args.codes:
    parser.error(f'--mode={args.mode} needs --codes=RUN/codes.npz (a trained run\'s codes)')
  if args.mode == 'all':
    run_all(args)
  elif args.mode == 'map':
    run_map(args, args.queries, args.database, baseline=not args.no_baseline)
  elif args.mode == 'paths':
    run_paths(args, args.queries, args.database)
  elif args.mode == 'topk':
    run_topk(args)
  elif args.mode == 'mih':
    run_mih(args)
  else:
    times = {}
    for q_scale, n_scale in ((1, 1), (2, 1), (4, 1), (1, 2), (1, 4)):
      times[q_scale, n_scale] = run_map(args, args.queries * q_scale, args.database * n_scale,
                                        baseline=False)
    base = times[1, 1]
    print('time / time(Q, N): ' + ', '.join(f'{q}Q×{n}N: {t / base:.2f}'
                                            for (q, n), t in times.items()))


if __name__ == '__main__':
  main()
