"""SIGTERM / SIGINT (a cluster's preemption, Ctrl-C) as a request to stop after the current
step, answered the same on every host."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import jax

if TYPE_CHECKING:
  from hashjax.runtime.checkpoint import Checkpointer


class PreemptionGuard:
  """Turns SIGTERM / SIGINT into a request to stop after the current step.

  Single process: a signal handler sets a flag. Guards nest: an inner guard starts with the
  request an enclosing one received (the CLI holds one for the whole job, so a signal after
  the loop has ended does not kill the process either). A request made before any guard is
  taken over too from a handler that records it as its `signal_name` attribute (train.py and
  gan.py install one before their imports, which take seconds).
  Multi-process (jax.process_count() > 1): orbax's `reached_preemption(step)`, JAX's
  preemption sync point, which answers the same on every host, so all hosts stop (and save)
  at the same step. Use as a context manager; the old handlers come back on exit.
  """

  def __init__(self, checkpointer: Checkpointer | None = None):
    self.checkpointer = checkpointer  # may be set later: the loop catches signals first
    self._requested = threading.Event()
    self._old = {}
    self.signal_name: str | None = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handler)
        outer = getattr(self._old[sig], '__self__', self._old[sig])
        if getattr(outer, 'signal_name', None) is not None:
          self.signal_name = outer.signal_name  # a request made before this guard
          self._requested.set()
    return self

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)
    return False

  def _handler(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    self._requested.set()

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step` (same answer on every host)."""
    if jax.process_count() > 1 and self.checkpointer is not None:
      return self.checkpointer.reached_preemption(step)
    return self._requested.is_set()
