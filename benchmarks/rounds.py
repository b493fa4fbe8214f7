"""Timing in alternating rounds, shared by the step benchmarks.

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
