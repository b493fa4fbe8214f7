"""What the checkpoint checksums cost on a large state: an orbax save (the
`CheckpointManager` and handler `runtime.checkpoint.Checkpointer` uses, waited for) against recording the SHA-256 of its files and
verifying them before a restore (`runtime.integrity`), in the same run.

  python benchmarks/checkpoint_checksums.py [--mib=300] [--rounds=3] [--dir=/tmp]

The default, 300 MiB of float32, is a ResNet-50's parameters with Adam's two moments
(25.6 M × 3 × 4 bytes). Prints the median seconds of each and the ratios to the save.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orbax.checkpoint as ocp  # noqa: E402

from hashjax.runtime import integrity  # noqa: E402


def _state(mib: int) -> dict[str, np.ndarray]:
  """~mib MiB of float32 in leaves of a few sizes (like a network's layers and moments)."""
  rng = np.random.default_rng(0)
  total, leaves, i = mib * (1 << 20) // 4, {}, 0
  while total > 0:
    size = min(total, int(rng.choice([1 << 12, 1 << 18, 1 << 21, 1 << 22])))
    leaves[f'leaf_{i:04d}'] = rng.standard_normal(size, np.float32)
    total, i = total - size, i + 1
  return leaves


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--mib', type=int, default=300)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--dir', default=tempfile.gettempdir())
  args = parser.parse_args(argv)
  state = _state(args.mib)
  times = {'save': [], 'record': [], 'verify': []}
  for round_ in range(args.rounds):
    folder = tempfile.mkdtemp(prefix='checksums-', dir=args.dir)
    try:
      manager = ocp.CheckpointManager(folder, item_handlers=ocp.StandardCheckpointHandler())
      started = time.perf_counter()
      manager.save(round_, args=ocp.args.StandardSave(state))
      manager.wait_until_finished()
      times['save'].append(time.perf_counter() - started)
      step_dir = os.path.join(folder, str(round_))
      for name, fn in (('record', integrity.record), ('verify', integrity.verify)):
        started = time.perf_counter()
        fn(step_dir)
        times[name].append(time.perf_counter() - started)
      manager.close()
    finally:
      shutil.rmtree(folder, ignore_errors=True)
  median = {k: float(np.median(v)) for k, v in times.items()}
  print(f'state: {args.mib} MiB of float32 in {len(state)} arrays; {args.rounds} rounds, '
        f'medians')
  for name in ('save', 'record', 'verify'):
    ratio = '' if name == 'save' else f'  ({median[name] / median["save"]:.2f}× the save)'
    print(f'{name:>7}: {median[name]:.3f} s{ratio}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
