"""Checkpoints in a workdir, through orbax's CheckpointManager.

A checkpoint is one pytree (train state, RNG key, data position, ...) saved under
`<workdir>/checkpoints/<step>`. Restoring takes an abstract target (shapes, dtypes,
shardings from `jax.eval_shape`), so arrays come back with the layout the job expects.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores pytrees by step; keeps the `max_to_keep` newest checkpoints.

  Args:
    directory: where the step folders go (created if missing).
    max_to_keep: complete checkpoints kept on disk (older ones are deleted after a save).
    async_save: write in a background thread (the step loop goes on while it writes).
  """

  def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, tree: Any, *, force: bool = False) -> bool:
    """Starts saving `tree` as `step`; returns whether a save was started."""
    return self._manager.save(step, args=ocp.args.StandardSave(tree), force=force)

  def restore(self, step: int, abstract_tree: Any) -> Any:
    """Restores `step` into the structure, dtypes and shardings of `abstract_tree`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_tree)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self):
    """Blocks until a background save has finished."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
