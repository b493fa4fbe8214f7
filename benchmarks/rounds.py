"""Timing in alternating rounds, and FLOP rates, shared by the step benchmarks.

This VM's speed drifts by ±15% over minutes, so hashjax and its baseline are timed in turn,
a few steps each, several times over, and compared by the median of the per-round ratios.
"""

import time
from typing import Callable

import numpy as np


def seconds_per_step(fn: Callable[[], None], steps: int) -> float:
  """Mean wall-clock seconds of `steps` calls of an already warmed-up `fn`."""
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / steps


def alternating_rounds(fns: dict[str, Callable[[], None] | None], steps: int, rounds: int,
                       on_round: Callable[[int, dict[str, float]], None] | None = None
                       ) -> dict[str, list[float]]:
  """Seconds per step of each callable (None entries skipped), timed in turn in each round:
  {name: [seconds per step, one per round]}. `on_round(r, {name: seconds})` after each."""
  times = {name: [] for name, fn in fns.items() if fn is not None}
  for r in range(rounds):
    for name in times:
      times[name].append(seconds_per_step(fns[name], steps))
    if on_round is not None:
      on_round(r, {name: t[-1] for name, t in times.items()})
  return times


def ratio_summary(ours: list[float], theirs: list[float]) -> tuple[float, float, float]:
  """(median, min, max) over rounds of ours / theirs in speed (their seconds / ours)."""
  ratios = [b / a for a, b in zip(ours, theirs)]
  return float(np.median(ratios)), min(ratios), max(ratios)


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a `jax.stages.Compiled` program by XLA's cost analysis (one
  device's program; a multiply-add counts 2); None where the backend gives none."""
  try:
    cost = compiled.cost_analysis()
  except NotImplementedError:
    return None
  if isinstance(cost, (list, tuple)):  # older jaxlibs: one dict per program
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and cost.get('flops', 0) > 0 else None


def flops_summary(flops: float | None, seconds: float, peak_tflops: float = 0.0) -> str:
  """'G GFLOP/step, R TFLOP/s, MFU U% of P TFLOP/s' for one device's step of `seconds`."""
  if flops is None:
    return 'FLOPs n/a'
  rate = flops / seconds / 1e12
  text = f'{flops / 1e9:.3g} GFLOP/step, {rate:.3g} TFLOP/s'
  if peak_tflops > 0:
    text += f', MFU {100 * rate / peak_tflops:.1f}% of {peak_tflops:g} TFLOP/s'
  return text
