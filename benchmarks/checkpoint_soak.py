"""Soak test of disk-aware checkpointing on a real, small tmpfs (run as root; Linux).

  sudo python benchmarks/checkpoint_soak.py [--size=5m] [--steps=300] [--every=2]

Trains the tiny digits HashNet (one checkpoint ≈ 1.7 MB) with a checkpoint every `--every`
steps on a tmpfs of `--size`, for `--rounds` runs resumed in the same workdir. Meanwhile a
"neighbour" thread writes and deletes a ballast file of random size at random moments, so
the disk really runs out before and during saves; it stops before each run's final save,
which by contract must fit (else the run exits non-zero). Prints saves attempted
/ skipped, checkpoints pruned, write failures caught, crashes (runs that raised), checkpoints
lost (a run whose newest checkpoint does not restore), and the per-save training stall with
async checkpointing (median time inside `save()`, as a fraction of the median step time).
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import hashnet_digits  # pylint: disable=g-import-not-at-top
from hashjax.hashing import job
from hashjax.hashing import run
from hashjax.runtime import checkpoint as ckpt_lib
from hashjax.runtime import loop

_durations = []
_real_save = ckpt_lib.Checkpointer.save
_calm = threading.Event()


def _timed_save(self, *args, **kwargs):
  if kwargs.get('final'):
    _calm.set()
    time.sleep(0.2)
  start = time.perf_counter()
  try:
    return _real_save(self, *args, **kwargs)
  finally:
    if not kwargs.get('final'):
      _durations.append(time.perf_counter() - start)


def _neighbour(mnt, rng):
  path = os.path.join(mnt, 'ballast')
  while not _calm.is_set():
    if os.path.exists(path):
      os.remove(path)
    else:
      try:
        with open(path, 'wb') as f:
          f.write(os.urandom(int(rng.uniform(0.5, 3.0) * 2**20)))
      except OSError:
        pass  # the disk was full for the neighbour too
    time.sleep(rng.uniform(0.01, 0.1))
  if os.path.exists(path):
    os.remove(path)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', default='6m')
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--every', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  ckpt_lib.Checkpointer.save = _timed_save
  mnt = tempfile.mkdtemp(prefix='soak')
  subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={args.size}', 'tmpfs', mnt], check=True)
  totals = dict(attempted=0, skipped=0, pruned=0, failed_writes=0, crashes=0, lost=0)
  step_times = []
  try:
    workdir = os.path.join(mnt, 'run')
    rng = random.Random(0)
    for rnd in range(args.rounds):
      _calm.clear()
      neighbour = threading.Thread(target=_neighbour, args=(mnt, rng), daemon=True)
      neighbour.start()
      c = hashnet_digits.get_config()
      c.bits, c.batch_size, c.num_steps = 16, 32, args.steps * (rnd + 1)
      c.checkpoint_every, c.eval_every, c.log_every = args.every, 10**6, 10
      c.split.query_per_class, c.split.train_per_class = 5, 20
      c.checkpoint.max_to_keep = 5
      try:
        run.train_and_evaluate(c, workdir)
      except Exception as e:  # pylint: disable=broad-except
        totals['crashes'] += 1
        print(f'round {rnd}: crashed: {e!r}')
      _calm.set()
      neighbour.join()
      import json  # pylint: disable=g-import-not-at-top
      rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
      last = rows[-1]
      for k in ('attempted', 'skipped', 'pruned', 'failed_writes'):
        totals[k] += last[f'checkpoint_{k}']  # counters are per run (per process)
      step_times += [c.batch_size / r['examples_per_sec'] for r in rows[1:]]
      ck = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'))
      latest = ck.latest_step()
      ck.close()
      try:
        state = loop.load_checkpoint(job.HashJob(c, workdir), workdir)[0]
        ok = latest is not None and int(state.step) == latest
      except Exception:  # pylint: disable=broad-except
        ok = False
      totals['lost'] += 0 if ok else 1
      print(f'round {rnd}: newest checkpoint {latest}, free {ckpt_lib.free_bytes(mnt)} B, '
            f'row {dict((k, last[k]) for k in last if k.startswith("checkpoint_"))}')
  finally:
    subprocess.run(['umount', '-l', mnt], check=False)
  stall, step = statistics.median(_durations), statistics.median(step_times)
  print(f"saves attempted {totals['attempted']}, skipped {totals['skipped']}, pruned "
        f"{totals['pruned']}, write failures caught {totals['failed_writes']}, crashes "
        f"{totals['crashes']}, checkpoints lost {totals['lost']}")
  print(f'per-save stall (median) {stall * 1e3:.2f} ms = {stall / step:.2f}× the median step '
        f'time ({step * 1e3:.2f} ms)')


if __name__ == '__main__':
  main()
