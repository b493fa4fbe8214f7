"""The search service's faults of benchmarks/fault_injection.py, on a finished train.py run
(`python -m hashjax.serve` as subprocesses, in the run's workdir on the tmpfs):

  codes   codes.npz replaced by one of twice the bits (copied from      exit 2, one line,
          another run); put back afterwards                             before serving
  header  adds of K images, the server stopped, one random bit of        exit 2, one line,
          served/added.bin's header flipped                              the file unchanged;
                                                                         --recover_store exit
                                                                         0; every add served

Each returns (a token for the run's line, [(failure kind, detail, outcome)]).
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import struct
import sys
import time
import urllib.request

import faults
import numpy as np
from PIL import Image

STARTUP_S = 180.0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _serve(workdir: str, log: str, env: dict, *extra: str) -> tuple[faults.Process, int]:
  port = _free_port()
  command = [sys.executable, '-m', 'hashjax.serve', f'--workdir={workdir}', f'--port={port}',
             *extra]
  return faults.Process(command, log, env), port


def _until_serving(process: faults.Process, port: int) -> bool:
  deadline = time.monotonic() + STARTUP_S
  while process.running() and time.monotonic() < deadline:
    try:
      with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/health', timeout=2):
        return True
    except OSError:
      time.sleep(0.2)
  return False


def _checked(outcome: faults.Outcome, want: str, text: str, what: str) -> list:
  """Failures of a process that should have exited `want` with `text` on stderr."""
  if outcome.traceback:
    return [('traceback', f'{what}: exit {outcome.status} with a Python traceback', outcome)]
  if outcome.status != want or text not in outcome.stderr:
    return [('unexpected exit', f'{what}: exit {outcome.status}, wanted {want} saying '
             f'{text!r}', outcome)]
  return []


def swapped_codes(workdir: str, rng: random.Random, env: dict, log: str):
  """The service started on a codes.npz of other bits; the original is put back."""
  path = os.path.join(workdir, 'codes.npz')
  original = open(path, 'rb').read()
  with np.load(io.BytesIO(original)) as f:
    arrays = {k: f[k] for k in f.files}
  bits = 2 * int(arrays['bits'])
  generator = np.random.default_rng(rng.randrange(1 << 30))
  for name in ('db_codes', 'query_codes'):
    arrays[name] = generator.integers(0, 256, (len(arrays[name]), bits // 8), dtype=np.uint8)
  arrays['bits'] = np.int64(bits)
  with open(path, 'wb') as f:
    np.savez(f, **arrays)
  try:
    process, _ = _serve(workdir, f'{log}.codes.log', env)
    outcome = process.wait(time.monotonic() + STARTUP_S)
  finally:
    with open(path, 'wb') as f:
      f.write(original)
  failures = _checked(outcome, '2', 'bit codes', 'serving a swapped codes.npz')
  return f'codes:{outcome.status}', failures


def _add(port: int, rng: random.Random) -> int:
  pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (16, 16, 3))
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, format='PNG')
  request = urllib.request.Request(f'http://127.0.0.1:{port}/api/items',
                                   data=buffer.getvalue(), headers={'Content-Type': 'image/png'})
  with urllib.request.urlopen(request, timeout=60) as response:
    return len(json.loads(response.read())['added'])


def _stop(process: faults.Process) -> faults.Outcome:
  process.signal(signal.SIGTERM)
  return process.wait(time.monotonic() + 60)


def _serve_and_count(workdir: str, env: dict, log: str, rng: random.Random | None):
  """(outcome, items added now (rng) or the store's `added` count (None), failure)."""
  process, port = _serve(workdir, log, env)
  count, problem = 0, None
  try:
    if not _until_serving(process, port):
      problem = 'the server did not start'
    elif rng is not None:
      count = sum(_add(port, rng) for _ in range(rng.randint(3, 12)))
    else:
      with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/stats', timeout=30) as r:
        count = json.loads(r.read())['added']
  except OSError as e:
    problem = f'a request failed ({e})'
  outcome = _stop(process)
  return outcome, count, problem


def damaged_header(workdir: str, rng: random.Random, env: dict, log: str):
  """Adds, a flipped header bit, the refused start, the recovery, and the adds served."""
  failures = []
  outcome, added, problem = _serve_and_count(workdir, env, f'{log}.adds.log', rng)
  if problem or outcome.traceback:
    return 'header:no-adds', [('unexpected exit', problem or 'traceback while adding', outcome)]
  path = os.path.join(workdir, 'served', 'added.bin')
  data = bytearray(open(path, 'rb').read())
  header = 8 + 4 + struct.unpack('<I', bytes(data[8:12]))[0] + 4
  offset, bit = rng.randrange(header), rng.randrange(8)
  data[offset] ^= 1 << bit
  open(path, 'wb').write(data)
  refused = _serve(workdir, f'{log}.refused.log', env)[0].wait(time.monotonic() + STARTUP_S)
  failures += _checked(refused, '2', 'is damaged at byte', f'header bit {bit} of byte {offset}')
  if open(path, 'rb').read() != data:
    failures.append(('results lost', 'the refused start changed added.bin', refused))
  recovered = _serve(workdir, f'{log}.recover.log', env, '--recover_store')[0].wait(
      time.monotonic() + STARTUP_S)
  failures += _checked(recovered, '0', '', '--recover_store')  # its report goes to stdout
  outcome, served, problem = _serve_and_count(workdir, env, f'{log}.served.log', None)
  if problem or served != added:
    failures.append(('results lost', f'{added} adds acknowledged, {served} served after the '
                     f'recovery ({problem or "all requests answered"})', outcome))
  return f'header:{refused.status}/{recovered.status}/{served}of{added}', failures
