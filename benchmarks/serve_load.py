"""Load test of the search service: concurrent searches and adds, then kill -9 and a restart.

Not part of the test suite. Traffic goes to 127.0.0.1 only, bounded in time and count:

  python benchmarks/serve_load.py                       # 16 clients, 60 s, 100,000 items
  python benchmarks/serve_load.py --clients=4 --seconds=10 --items=5000   # a quick look
  python benchmarks/serve_load.py --large_fraction=0.25 --max_rss_mib=2048  # 4 upload 36 MP PNGs

1. A finished run: --workdir (or a HashNet run trained here on MNIST's test set, or on the
   bundled digits when ../shared/data/mnist_t10k.npz is absent).
2. Its database grown to --items by adding noisy copies of its images (SearchService.add:
   encoded and stored, like adds through the API).
3. `python -m hashjax.serve` in a subprocess; --clients threads, each with a keep-alive
   connection, send searches (by gallery query or database item, topk = 10, some within a
   radius) and, with probability --add_fraction, adds of a new random image, for --seconds.
   A --large_fraction of the clients instead add only large PNGs (--large_side² pixels, RGB,
   ~36 M pixels by default: a ~110 MB decode each); their 413/503 answers (the service's
   memory and pixel limits) are counted apart, not as errors.
4. While the clients still run, the server gets SIGKILL. Restarted, it must hold every add
   that was acknowledged, each image byte for byte.

Prints requests/s, p50/p99 latency per kind, errors (must be 0), adds acknowledged and found
after the restart (must be all; large adds by their presence, small ones byte for byte), the
server's peak RSS (must stay under --max_rss_mib when given), and `result: PASS` or `FAIL`.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))
MNIST = os.path.join(ROOT, '..', 'shared', 'data', 'mnist_t10k.npz')
TOKEN = 'load-test'


def train_run(workdir: str) -> None:
  """A small finished HashNet run (48 bits) to serve."""
  from configs import hashnet_digits  # pylint: disable=g-import-not-at-top
  from hashjax.hashing import run  # pylint: disable=g-import-not-at-top
  from hashjax.runtime.settings import override  # pylint: disable=g-import-not-at-top
  settings = {'bits': 48, 'num_steps': 300, 'eval_every': 10**6, 'checkpoint_every': 300,
              'split.query_per_class': 100, 'split.train_per_class': 500}
  if os.path.exists(MNIST):
    settings.update(dataset=f'npz:{os.path.abspath(MNIST)}')
  else:
    settings.update({'split.query_per_class': 30, 'split.train_per_class': 100})
  run.train_and_evaluate(override(hashnet_digits.get_config(), settings), workdir)


def grow(workdir: str, items: int, seed: int) -> float:
  """Adds noisy copies of the run's images until the database holds `items`; seconds taken."""
  from hashjax.serve.service import SearchService  # pylint: disable=g-import-not-at-top
  service = SearchService(workdir)
  start, rng = time.perf_counter(), np.random.default_rng(seed)
  try:
    while len(service.index) < items:
      count = min(2048, items - len(service.index))
      ids = rng.integers(0, service.num_original, count)
      images = np.stack([service.item_image(i) for i in ids]).astype(np.int16)
      noise = rng.integers(-12, 13, images.shape)
      service.add(np.clip(images + noise, 0, 255).astype(np.uint8),
                  None if service.index.db_labels is None else service.index.db_labels[ids])
  finally:
    service.close()
  return time.perf_counter() - start


class Client(threading.Thread):
  """One keep-alive connection sending searches and adds until `stop` is set."""

  def __init__(self, port, stop, kill_time, args, seed, shape, sizes, large=None):
    super().__init__(daemon=True)
    self.port, self.stop, self.kill_time = port, stop, kill_time
    self.args, self.rng, self.shape, self.sizes = args, np.random.default_rng(seed), shape, sizes
    self.large = large  # PNG bytes: this client adds only that image
    self.latencies = {'search': [], 'add': [], 'large add': []}
    self.errors, self.acked, self.limited, self.acked_large = [], {}, 0, []

  def _request(self, conn, method, url, body=None, headers=None):
    conn.request(method, url, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()

  def run(self):
    from hashjax.serve import uploads  # pylint: disable=g-import-not-at-top
    conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
    while not self.stop.is_set():
      adding = self.large is not None or self.rng.random() < self.args.add_fraction
      if self.large is not None:
        request = ('POST', '/api/items', self.large,
                   {'Authorization': f'Bearer {TOKEN}', 'Content-Type': 'image/png'})
      elif adding:
        image = self.rng.integers(0, 256, self.shape, dtype=np.uint8)
        request = ('POST', '/api/items', uploads.encode_png(image),
                   {'Authorization': f'Bearer {TOKEN}', 'Content-Type': 'image/png'})
      else:
        kind = 'query' if self.rng.random() < 0.5 else 'item'
        i = self.rng.integers(0, self.sizes[kind])
        radius = '&radius=8' if self.rng.random() < 0.2 else ''
        request = ('GET', f'/api/search?{kind}={i}&topk=10{radius}', None, None)
      start = time.perf_counter()
      try:
        status, body = self._request(conn, *request)
      except (OSError, http.client.HTTPException) as e:
        if time.time() < self.kill_time[0]:
          self.errors.append(f'{request[1]}: {type(e).__name__}: {e}')
        return  # the server is gone (killed): this request was never acknowledged
      elapsed = time.perf_counter() - start
      if self.large is not None and status in (413, 503):
        self.limited += 1  # the service's memory or pixel limits: a 4xx/503 by design
        continue
      if status != 200:
        self.errors.append(f'{request[1]}: {status} {body[:200]!r}')
        continue
      kind = 'large add' if self.large is not None else 'add' if adding else 'search'
      self.latencies[kind].append(elapsed)
      if self.large is not None:
        self.acked_large += json.loads(body)['added']
      elif adding:
        self.acked[json.loads(body)['added'][0]] = image


def start(workdir, port):
  from tests.serve.test_main import start_server  # pylint: disable=g-import-not-at-top
  return start_server(workdir, port, f'--token={TOKEN}')


def large_png(side: int) -> bytes:
  """A smooth side × side RGB PNG (compresses to well under the upload limit)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  ramp = np.arange(side, dtype=np.uint32)
  pixels = np.stack([np.add.outer(ramp, ramp) // 47, np.add.outer(ramp, 2 * ramp) // 71,
                     np.add.outer(3 * ramp, ramp) // 97], -1) % 256
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, format='PNG', compress_level=9)
  return buffer.getvalue()


def peak_rss_mib(pid: int) -> float:
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  return float('nan')


def load(args, workdir, port, shape, sizes):
  """Runs the clients, kills the server while they run; returns (clients, seconds, rss)."""
  server = start(workdir, port)
  stop, kill_time = threading.Event(), [float('inf')]
  large = round(args.clients * args.large_fraction)
  png = large_png(args.large_side) if large else None
  if png is not None:
    print(f'{large} clients add a {args.large_side}×{args.large_side} RGB PNG of '
          f'{len(png) / 1e6:.2f} MB')
  clients = [Client(port, stop, kill_time, args, args.seed + i, shape, sizes,
                    png if i < large else None) for i in range(args.clients)]
  began = time.perf_counter()
  for c in clients:
    c.start()
  time.sleep(args.seconds)
  rss = peak_rss_mib(server.pid)
  kill_time[0] = time.time()
  server.send_signal(signal.SIGKILL)  # adds are in flight
  seconds = time.perf_counter() - began
  server.wait()
  stop.set()
  for c in clients:
    c.join(timeout=120)
  return clients, seconds, rss


def verify(workdir, port, acked, acked_large) -> tuple[int, int]:
  """(acknowledged adds found after a restart: small ones byte for byte, large ones by
  their presence; database size)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  server = start(workdir, port)
  try:
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    found = 0
    for item, image in acked.items():
      conn.request('GET', f'/api/items/{item}.png')
      response = conn.getresponse()
      body = response.read()
      if response.status == 200:
        got = np.asarray(Image.open(io.BytesIO(body)))
        found += bool(np.array_equal(got.reshape(image.shape), image))
    for item in acked_large:
      conn.request('GET', f'/api/items/{item}.png')
      response = conn.getresponse()
      found += response.read() != b'' and response.status == 200
    conn.request('GET', '/api/stats')
    size = json.loads(conn.getresponse().read())['database']
  finally:
    server.terminate()
    server.wait(timeout=60)
  return found, size


def _percentiles(values) -> str:
  if not values:
    return 'none'
  ms = np.asarray(values) * 1e3
  return f'p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms'


def report(clients, seconds, rss, found, size, max_rss) -> bool:
  searches = [x for c in clients for x in c.latencies['search']]
  adds = [x for c in clients for x in c.latencies['add']]
  large = [x for c in clients for x in c.latencies['large add']]
  errors = [e for c in clients for e in c.errors]
  acked = sum(len(c.acked) + len(c.acked_large) for c in clients)
  limited = sum(c.limited for c in clients)
  total = len(searches) + len(adds)
  print(f'{len(clients)} clients, {seconds:.1f} s: {total} requests, {total / seconds:.1f} '
        f'requests/s ({len(searches) / seconds:.1f} searches/s, {len(adds) / seconds:.1f} '
        'adds/s)')
  print(f'latency all: {_percentiles(searches + adds)}; search: {_percentiles(searches)}; '
        f'add: {_percentiles(adds)}')
  if large or limited:
    print(f'large adds: {len(large)} added ({_percentiles(large)}), {limited} answered 413/503 '
          'by the limits')
  print(f'errors: {len(errors)}' + (f' (first: {errors[0]})' if errors else ''))
  bound = '' if max_rss is None else f' (bound {max_rss:.0f} MiB: ' + (
      'under)' if rss < max_rss else 'OVER)')
  print(f'server peak RSS: {rss:.0f} MiB{bound}')
  print(f'after kill -9 and restart: {found} of {acked} acknowledged adds present; database '
        f'{size} items')
  ok = not errors and found == acked and (max_rss is None or rss < max_rss)
  print(f'result: {"PASS" if ok else "FAIL"}')
  return ok


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default=None, help='a finished run (default: train one)')
  parser.add_argument('--items', type=int, default=100_000, help='database size to serve')
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--seconds', type=float, default=60.0)
  parser.add_argument('--add_fraction', type=float, default=0.2)
  parser.add_argument('--large_fraction', type=float, default=0.0,
                      help='fraction of the clients that add only large PNGs')
  parser.add_argument('--large_side', type=int, default=6000, help='their side in pixels')
  parser.add_argument('--max_rss_mib', type=float, default=None,
                      help="the server's peak RSS must stay under this (MiB)")
  parser.add_argument('--port', type=int, default=8765)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  if not (1 <= args.clients <= 64 and 0 < args.seconds <= 600 and args.items <= 2_000_000):
    parser.error('bounded load only: --clients 1..64, --seconds ≤ 600, --items ≤ 2,000,000')
  if not (0 <= args.large_fraction <= 1 and 1 <= args.large_side <= 20_000):
    parser.error('--large_fraction in [0, 1], --large_side in 1..20000')
  scratch = tempfile.mkdtemp(prefix='serve_load_')
  workdir = os.path.join(scratch, 'run')
  if args.workdir:
    shutil.copytree(args.workdir, workdir)
  else:
    began = time.perf_counter()
    train_run(workdir)
    print(f'trained the run to serve: {time.perf_counter() - began:.0f} s')
  print(f'grew the database to {args.items} items in {grow(workdir, args.items, args.seed):.0f} s')
  from hashjax.serve.service import SearchService  # pylint: disable=g-import-not-at-top
  service = SearchService(workdir)
  shape, sizes = service.image_shape, {'query': service.num_query, 'item': args.items}
  service.close()
  clients, seconds, rss = load(args, workdir, args.port, shape, sizes)
  found, size = verify(workdir, args.port, {k: v for c in clients for k, v in c.acked.items()},
                       [i for c in clients for i in c.acked_large])
  ok = report(clients, seconds, rss, found, size, args.max_rss_mib)
  shutil.rmtree(scratch, ignore_errors=True)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
