"""Shared plumbing of the command-line jobs (train.py, gan.py): flag parsing with one-line
errors, the progress bar, and the mapping of user errors to exit code 2."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from hashjax import parallel
from hashjax.checkpoint import CheckpointError
from hashjax.config import ConfigError
from hashjax.data import DataError
from hashjax.pretrained import PretrainedError
from hashjax.training import DivergedError

USER_ERRORS = (ConfigError, DataError, PretrainedError, parallel.ParallelError)
EXIT_USAGE = 2


def fail(prog: str, message: str) -> int:
  print(f'{prog}: error: {message}', file=sys.stderr)
  return EXIT_USAGE


def _one_line(error: BaseException) -> str:
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]  # config_dict wraps a KeyError in an AttributeError
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  if isinstance(error, KeyError):
    text = f'unknown config key {text}'
  return ' '.join(text.split())


def default_workdir(config_path: str) -> str:
  """runs/<config file name without .py>."""
  name = os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]
  return os.path.join('runs', name)


class ProgressReporter:
  """tqdm progress bar with the latest logged metrics; evaluations printed as one line."""

  def __init__(self, keys: tuple[str, ...]):
    self._keys = keys
    self._bar = None

  def start(self, total_steps: int, first_step: int) -> None:
    self._bar = tqdm(total=total_steps, initial=first_step, unit='step', dynamic_ncols=True)
    self._at = first_step

  def log(self, row: dict[str, Any]) -> None:
    self._bar.update(row['step'] - self._at)
    self._at = row['step']
    self._bar.set_postfix({k: f'{row[k]:.4g}' for k in self._keys if k in row})

  def evaluated(self, results: dict[str, Any]) -> None:
    shown = ' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                     for k, v in results.items())
    (self._bar.write if self._bar is not None else print)(f'eval: {shown}')

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _log_to_stderr():
  """hashjax's log records (resume, checkpoint warnings) as `LEVEL message` lines on stderr;
  absl's root handler would drop INFO."""
  logger = logging.getLogger('hashjax')
  if not logger.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(levelname)s %(message)s'))
    logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False


def run_job(prog: str, argv: list[str], default_config: str,
            job: Callable[[Any, str], Any]) -> int:
  """The common CLI of the jobs: --config (an ml_collections config file, locked so a typo in
  --config.KEY=VALUE is an error) and --workdir (default runs/<config name>).

  Runs job(config, workdir). A bad flag, config file, config value or data source prints one
  line `PROG: error: ...` on stderr and returns exit code 2 (no traceback).
  """
  try:
    # config_flags reads the config file and applies the --config.* overrides while the flag
    # is defined and first read; unknown keys, bad values and unreadable files raise these.
    config_flag = config_flags.DEFINE_config_file(
        'config', default_config, 'Config file; override fields with --config.KEY=VALUE.',
        lock_config=True)
    workdir_flag = flags.DEFINE_string('workdir', None,
                                       'Output directory (default: runs/<config name>).')
    distributed = flags.DEFINE_enum(
        'distributed', 'auto', ['auto', 'on', 'off'],
        'Multi-process JAX: auto = on under SLURM / TPU pods or with --coordinator_address.')
    coordinator = flags.DEFINE_string('coordinator_address', None,
                                      'host:port of process 0 (multi-process jobs off SLURM/TPU).')
    num_processes = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
    process_id = flags.DEFINE_integer('process_id', None, 'This process (0 .. num_processes-1).')
    flags.FLAGS(argv)
    config_path = flags.FLAGS['config'].config_filename.split(':')[0]
    if not os.path.isfile(config_path):
      return fail(prog, f'config file {config_path!r} does not exist; pass '
                        '--config=configs/<name>.py')
    config = config_flag.value
    config.to_dict()  # a config file that failed to load raises on first use
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    return fail(prog, _one_line(e))
  workdir = workdir_flag.value or default_workdir(config_path)
  _log_to_stderr()
  try:
    parallel.initialize_distributed(distributed.value, coordinator_address=coordinator.value,
                                    num_processes=num_processes.value,
                                    process_id=process_id.value)
    job(config, workdir)
  except USER_ERRORS as e:
    return fail(prog, str(e))
  except (CheckpointError, DivergedError) as e:  # no final checkpoint; a NaN/inf loss
    print(f'{prog}: error: {e}', file=sys.stderr)
    return 1
  return 0
