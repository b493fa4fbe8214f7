"""Data parallelism by declaration: a device mesh, shardings, and multi-host plumbing.

The training step is one `jax.jit` program over a `Mesh` with a 'data' axis (and a 'model'
axis of size 1, reserved for model parallelism): the global batch is sharded on 'data',
parameters and optimizer state are replicated, and XLA inserts the collectives — the
gradient all-reduce, and the all-gather that lets HashNet's pairwise loss see every pair of
the global batch. The same program runs on 1 CPU, 8 GPUs or a multi-host TPU pod. There is
no `pmap`: it is in maintenance mode and itself implemented with jit + shard_map.

Multi-host: `initialize_distributed` calls `jax.distributed.initialize` (automatic on TPU
pods and SLURM, explicit coordinator otherwise); each process loads only its slice of the
global batch (`process_slice`) and `global_batch` assembles the global arrays with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hashjax.runtime.errors import ParallelError

log = logging.getLogger(__name__)

DATA, MODEL = 'data', 'model'


def initialize_distributed(mode: str = 'auto', *, coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts multi-process JAX when asked.

  Args:
    mode: 'off' (single process), 'on' (always call `jax.distributed.initialize`; on TPU pods
      and SLURM it finds the cluster itself), or 'auto' (on when a coordinator address is
      given or SLURM/TPU-pod environment variables say the job spans several processes).
    coordinator_address: 'host:port' of process 0. num_processes, process_id: explicit
      topology (needed off SLURM/TPU).
  """
  import os  # pylint: disable=g-import-not-at-top
  if mode not in ('off', 'on', 'auto'):
    raise ParallelError(f"distributed={mode!r}; accepted: 'off', 'on', 'auto'")
  if mode == 'off':
    return
  if mode == 'auto':
    on_cluster = (int(os.environ.get('SLURM_NTASKS', '1')) > 1
                  or 'TPU_WORKER_HOSTNAMES' in os.environ)
    if coordinator_address is None and not on_cluster:
      return
  # JAX's CPU backend runs cross-process collectives through gloo (no effect on GPU/TPU
  # computations; asking for the backend here would initialise it too early).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  log.info('process %d of %d, %d local / %d global devices', jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(devices=None) -> Mesh:
  """A ('data', 'model') mesh over all devices, model axis of size 1."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1, 1), (DATA, MODEL))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest whole."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch: int, mesh: Mesh, what: str = 'batch_size') -> None:
  """The global batch must split evenly over the data axis and over the processes."""
  n = mesh.shape[DATA]
  if global_batch % n:
    raise ParallelError(f'{what}={global_batch} is not divisible by the {n} devices of the '
                        f"mesh's data axis; use a multiple of {n}")
  if global_batch % jax.process_count():
    raise ParallelError(f'{what}={global_batch} is not divisible by the '
                        f'{jax.process_count()} processes')


def process_slice(global_batch: int) -> slice:
  """This process's rows of a global batch (processes own contiguous, equal slices)."""
  per_process = global_batch // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles global arrays sharded on 'data' from each process's slice (host arrays)."""
  sharding = data_sharding(mesh)

  def one(x):
    x = np.asarray(x)
    shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
    return jax.make_array_from_process_local_data(sharding, x, shape)

  return jax.tree.map(one, local)


def to_host(tree: Any) -> Any:
  """numpy copies of (replicated) arrays, readable on every process."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(one, tree)


def local_query_jit(fn, num_query_args: int, num_db_args: int):
  """jit `fn(*query_args, *db_args)` over this process's devices: query args split on
  'data', database args replicated; every output has the query axis first and comes back
  split the same way. Evaluation is host-local, so it uses `jax.local_devices()`."""
  mesh = Mesh(np.asarray(jax.local_devices()), (DATA,))
  rows, whole = NamedSharding(mesh, PartitionSpec(DATA)), NamedSharding(mesh, PartitionSpec())
  return jax.jit(fn, in_shardings=(rows,) * num_query_args + (whole,) * num_db_args,
                 out_shardings=rows)


def replicate(x, mesh: Mesh) -> jax.Array:
  """A host value (the same on every process) as an array replicated over the mesh."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, replicated(mesh), lambda index: x[index])


def is_main_process() -> bool:
  """Only process 0 writes logs, eval files and samples."""
  return jax.process_index() == 0
