"""Which hashing job a config asks for: an ordinary HashNet run, or (with
`updating.from_workdir`) an update of a finished one."""

from __future__ import annotations

from typing import Any

import ml_collections

from hashjax.hashing import job, update
from hashjax.hashing.config import HashConfig, hash_config
from hashjax.runtime import loop, plumbing


def train_and_evaluate(config: ml_collections.ConfigDict | HashConfig, workdir: str, *,
                       reporter: plumbing.Reporter | None = None) -> dict[str, Any]:
  """Trains HashNet as configured (`hashjax.runtime.loop.run` over a `HashJob`), evaluating every
  `eval_every` steps and at the end.

  Runs data-parallel over every device (all processes' devices after
  `parallel.initialize_distributed`); `batch_size` is global.

  Args:
    config: a hashing ConfigDict (see configs/) or a validated `HashConfig`.
    workdir: output directory; an existing checkpoint there is resumed.
    reporter: receives progress on process 0 (None: silent).

  Returns:
    The final evaluation results (also `<workdir>/eval.json`), or, when SIGTERM or SIGINT
    stopped the run, {'preempted_at_step': step, 'signal': name} after a checkpoint of that
    step was written. With `updating.from_workdir` set, the run is an update of that finished
    run (`hashjax.update.UpdateJob`).
  """
  if hash_config(config).updating.from_workdir is not None:
    return loop.run(update.UpdateJob, config, workdir, reporter=reporter)
  return loop.run(job.HashJob, config, workdir, reporter=reporter)
