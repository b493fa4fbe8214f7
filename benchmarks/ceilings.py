"""What this device's JAX reaches on plain work: a square matrix product in bfloat16 and in
float32 (TFLOP/s), and an elementwise pass over a large array (GB/s, bytes read + written).
The ceilings against which benchmarks/device_check.sh reads the train steps' FLOP rates.

  python benchmarks/ceilings.py [--n=8192] [--gbytes=4] [--reps=10]

Inputs are random (zeros can run faster); each figure is the median of --reps timed calls
after two warm-ups. On a GPU, float32 products run at XLA's default precision (TF32 tensor
cores on Hopper), so the float32 figure shows which peak a float32 step is held to.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def median_seconds(fn, *args, reps: int) -> float:
  """Median wall-clock seconds of fn(*args) (blocked on), after two warm-up calls."""
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_tflops(n: int, dtype, reps: int) -> float:
  a, b = (jax.random.normal(key, (n, n), dtype) for key in jax.random.split(jax.random.key(0)))
  return 2 * n**3 / median_seconds(jax.jit(jnp.matmul), a, b, reps=reps) / 1e12


def copy_gbps(gbytes: float, reps: int) -> float:
  x = jax.random.normal(jax.random.key(1), (int(gbytes * 2**30) // 4,), jnp.float32)
  seconds = median_seconds(jax.jit(lambda v: v * 1.0001), x, reps=reps)
  return 2 * x.nbytes / seconds / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--n', type=int, default=8192, help='matrix side')
  parser.add_argument('--gbytes', type=float, default=4.0, help='array size of the pass, GiB')
  parser.add_argument('--reps', type=int, default=10)
  args = parser.parse_args()
  print(f'devices: {jax.devices()}')
  for dtype in (jnp.bfloat16, jnp.float32):
    rate = matmul_tflops(args.n, dtype, args.reps)
    print(f'matmul {args.n}x{args.n}x{args.n} {jnp.dtype(dtype).name}: {rate:.3g} TFLOP/s',
          flush=True)
  print(f'elementwise pass over {args.gbytes:g} GiB float32: '
        f'{copy_gbps(args.gbytes, args.reps):.4g} GB/s (read + written)', flush=True)


if __name__ == '__main__':
  main()
