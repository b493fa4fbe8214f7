"""Shared plumbing of the command-line jobs (train.py, gan.py): the flags every job takes,
parsing with one-line errors, the progress bar, and the mapping of errors to exit codes.

Each CLI defines its flags when it is imported, on a `flags.FlagValues` of its own
(`define_job_flags`, plus its own flags), so gan.py's --mode is no flag of train.py when one
process imports both. `run_job` parses them afresh on every call, so `train.main(argv)` and
`gan.main(argv)` can run many times in one process (the CLI tests do) with different argv.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import logging
import os
import re
import sys
from typing import Any, Callable, Iterator

from absl import flags
from ml_collections import config_dict, config_flags
from tqdm import tqdm

from hashjax.runtime import parallel
from hashjax.runtime.errors import USER_ERRORS, CheckpointError, DivergedError
from hashjax.runtime.preemption import PreemptionGuard

EXIT_USAGE = 2
_CONFIG_ARG = re.compile(r'^--?config(=|$)')
_OVERRIDE = re.compile(r'^--?config\.([^=]+)=(.*)$')
_HELP_ARGS = ('-h', '--help', '--helpshort', '--helpfull')


class UsageError(Exception):
  """A bad flag, config file or config value: one line for the user, exit code 2."""


@dataclasses.dataclass(frozen=True)
class JobFlags:
  """The flags every job takes, bound to the job's FlagValues (`define_job_flags`)."""
  flag_values: flags.FlagValues
  default_config: str
  argv: list[str]  # the argv being parsed: config_flags reads the --config.KEY=VALUE from it
  config: flags.FlagHolder
  workdir: flags.FlagHolder
  distributed: flags.FlagHolder
  coordinator_address: flags.FlagHolder
  num_processes: flags.FlagHolder
  process_id: flags.FlagHolder


def define_job_flags(flag_values: flags.FlagValues, default_config: str) -> JobFlags:
  """Defines --config (an ml_collections config file, locked so that a typo in
  --config.KEY=VALUE is an error), --workdir and the multi-process flags on flag_values."""
  argv = ['']
  kw = {'flag_values': flag_values}
  shown = os.path.relpath(default_config, os.path.dirname(os.path.dirname(default_config)))
  job_flags = JobFlags(
      flag_values=flag_values,
      default_config=default_config,
      argv=argv,
      # The flag's own default stays None (a default is parsed once, when the flag is
      # defined, and overrides would then edit that one object): parse_flags adds
      # --config=default_config to an argv that names no config.
      config=config_flags.DEFINE_config_file(
          'config', None, 'Config file; override fields with --config.KEY=VALUE.',
          lock_config=True, sys_argv=argv, **kw),
      workdir=flags.DEFINE_string('workdir', None,
                                  'Output directory (default: runs/<config name>).', **kw),
      distributed=flags.DEFINE_enum(
          'distributed', 'auto', ['auto', 'on', 'off'],
          'Multi-process JAX: auto = on under SLURM / TPU pods or with --coordinator_address.',
          **kw),
      coordinator_address=flags.DEFINE_string(
          'coordinator_address', None, 'host:port of process 0 (multi-process jobs off '
          'SLURM/TPU).', **kw),
      num_processes=flags.DEFINE_integer('num_processes', None, 'Processes in the job.', **kw),
      process_id=flags.DEFINE_integer('process_id', None,
                                      'This process (0 .. num_processes-1).', **kw))
  flag_values['config'].default_as_str = repr(shown)  # what --help shows
  return job_flags


def fail(prog: str, message: str, code: int = EXIT_USAGE) -> int:
  """Prints `PROG: error: message` as a line of its own on stderr (the message's white space
  folded to single spaces); returns `code`."""
  close_progress_bars()
  print(f'{prog}: error: {" ".join(str(message).split())}', file=sys.stderr)
  return code


class OneLineParser(argparse.ArgumentParser):
  """The flags of a command module (`python -m hashjax.commands.*`, the experiments): a bad
  flag is one line `PROG: error: ...` on stderr and exit code 2, with no usage block."""

  def error(self, message):
    sys.exit(fail(self.prog, message))


def _one_line(error: BaseException) -> str:
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]  # config_dict wraps a KeyError in an AttributeError
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  if isinstance(error, KeyError):
    text = f'unknown config key {text}'
  head, traceback, tail = text.partition('Traceback (most recent call last):')
  if traceback:  # a config file that raised: the exception, not the traceback
    text = head + tail.strip().splitlines()[-1]
  return ' '.join(text.split())


def _accepted_keys(error: BaseException, argv: list[str], config_path: str) -> str:
  """For an unknown nested key (--config.augment.sharpen=1): '; accepted under augment: crop,
  flip, ...' from the config file's defaults; '' otherwise (top-level keys get config_dict's
  'Did you mean')."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  if not (isinstance(error, KeyError) and error.args):
    return ''
  paths = [m[1] for arg in argv if (m := _OVERRIDE.match(arg))]
  key = str(error.args[0]).strip('\'"')
  parents = [p.rpartition('.')[0] for p in paths if '.' in p and p.rpartition('.')[2] == key]
  if not parents:
    return ''
  try:
    spec = importlib.util.spec_from_file_location('_hashjax_config', config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    node = module.get_config()
    for part in parents[0].split('.'):
      node = node[part]
  except (OSError, ImportError, SyntaxError, AttributeError, KeyError, TypeError, ValueError):
    # the hint is optional: the error stands without it
    return ''
  if not isinstance(node, config_dict.ConfigDict):
    return ''
  return f'; accepted under {parents[0]}: {", ".join(node.keys())}'


def default_workdir(config_path: str) -> str:
  """runs/<config file name without .py>."""
  name = os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]
  return os.path.join('runs', name)


def parse_flags(job_flags: JobFlags, argv: list[str]) -> list[str]:
  """Parses argv (argv[0]: the program) into job_flags afresh, whatever an earlier call
  parsed; the job's default config when argv names none. Returns the positional arguments
  left over, argv[0] first. Raises absl's flags.Error and config_flags' errors."""
  flag_values = job_flags.flag_values
  flag_values.unparse_flags()
  for name in [name for name in flag_values if name.startswith('config.')]:
    delattr(flag_values, name)  # config_flags defines a flag per override, on every parse
  argv = list(argv)
  if not any(_CONFIG_ARG.match(arg) for arg in argv[1:]):
    argv.insert(1, f'--config={job_flags.default_config}')  # before the overrides (config_flags)
  job_flags.argv[:] = argv
  return flag_values(argv)


def _config_path(argv: list[str], default_config: str) -> str:
  """The config file that argv names (--config=FILE[:ARGS] or --config FILE), else the default."""
  for i, arg in enumerate(argv[1:], 1):
    if _CONFIG_ARG.match(arg):
      value = arg.partition('=')[2] if '=' in arg else ' '.join(argv[i + 1:i + 2])
      return value.split(':')[0]
  return default_config


def split_none_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """(argv without its `--config.KEY=None` overrides, the KEYs whose last override is None).

  config_flags parses an override with the field's type (int('None') fails), so the Nones
  are set after parsing, by `set_none`; a later override of the same key wins, as always."""
  last = {}
  for arg in argv[1:]:
    if match := _OVERRIDE.match(arg):
      last[match[1]] = match[2]
  none_keys = [key for key, value in last.items() if value == 'None']
  kept = [arg for arg in argv if not ((match := _OVERRIDE.match(arg)) and
                                      (match[2] == 'None' or match[1] in none_keys))]
  return kept, none_keys


def set_none(config, key: str) -> None:
  """Sets the dotted `key` of a ConfigDict to None; a UsageError unless the config declares
  it as one that may be None (a `placeholder` or `FieldReference`, or None already)."""
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    node = node.get(part) if isinstance(node, config_dict.ConfigDict) else None
  fields = (dict(node.items(preserve_field_references=True))
            if isinstance(node, config_dict.ConfigDict) else {})
  if leaf not in fields:
    raise UsageError(f'unknown config key {key!r}')
  value = fields[leaf]
  if not (value is None or isinstance(value, config_dict.FieldReference)):
    raise UsageError(f'--config.{key}=None: {key} cannot be None; it takes '
                     f'{"an" if type(value).__name__[0] in "aeiou" else "a"} '
                     f'{type(value).__name__} (this config\'s value: {value!r})')
  node[leaf] = None


def load_config(job_flags: JobFlags, argv: list[str]) -> tuple[Any, str]:
  """(config, workdir) from argv. Raises UsageError (one line) for a bad flag, a missing or
  broken config file, an unknown config key, a malformed value, or None for a field that
  cannot be None."""
  config_path = _config_path(argv, job_flags.default_config)
  if not os.path.isfile(config_path):
    raise UsageError(f'config file {config_path!r} does not exist; pass '
                     '--config=configs/<name>.py')
  argv, none_keys = split_none_overrides(argv)
  try:
    rest = parse_flags(job_flags, argv)
    config = job_flags.config.value
    config.to_dict()  # a config file that failed to load raises on first use
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    raise UsageError(_one_line(e) + _accepted_keys(e, argv, config_path)) from e
  if len(rest) > 1:
    raise UsageError(f'unexpected argument {rest[1]!r}; flags are written --name=value')
  for key in none_keys:
    set_none(config, key)
  return config, job_flags.workdir.value or default_workdir(config_path)


class ProgressReporter:
  """tqdm progress bar with the latest logged metrics; evaluations printed as one line."""
  _open: set[ProgressReporter] = set()  # bars drawn and not closed (see close_progress_bars)

  def __init__(self, keys: tuple[str, ...]):
    self._keys = keys
    self._bar = None

  def start(self, total_steps: int, first_step: int) -> None:
    self._bar = tqdm(total=total_steps, initial=first_step, unit='step', dynamic_ncols=True)
    self._at = first_step
    ProgressReporter._open.add(self)

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
      self._bar.close()  # ends the bar's line
      self._bar = None
    ProgressReporter._open.discard(self)


def close_progress_bars() -> None:
  """Closes every bar still drawn, so that what follows starts a line of its own."""
  for reporter in list(ProgressReporter._open):
    reporter.close()


class _StderrHandler(logging.Handler):
  """Writes each record as a line on sys.stderr as it is then (pytest swaps it between
  tests), through tqdm.write: a progress bar being drawn is cleared first and drawn again
  below the line, never continued by it."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      tqdm.write(self.format(record), file=sys.stderr)
    except (OSError, ValueError):  # a closed or broken stream
      self.handleError(record)


@contextlib.contextmanager
def _log_to_stderr() -> Iterator[None]:
  """hashjax's log records (resume, checkpoint warnings) as `LEVEL message` lines on stderr
  while the block runs (absl's root handler would drop INFO); the logger is left as it was
  after, so a CLI run in-process changes no logging of its caller."""
  logger = logging.getLogger('hashjax')
  level, propagate = logger.level, logger.propagate
  handler = _StderrHandler()
  handler.setFormatter(logging.Formatter('%(levelname)s %(message)s'))
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def run_job(prog: str, argv: list[str], job_flags: JobFlags,
            job: Callable[[Any, str], Any]) -> int:
  """The common CLI of the jobs: parses argv into job_flags (default workdir
  runs/<config name>), then runs job(config, workdir). Returns the exit code.

  0: done (or --help). 2: a bad flag, config file, config value or data source, printed as
  one line `PROG: error: ...` on stderr (no traceback). 1: the final checkpoint could not be
  written, or the loss went NaN/inf (the message names the last good checkpoint).
  """
  if any(arg in _HELP_ARGS for arg in argv[1:]):
    print(f'usage: {prog} [--config=FILE] [--config.KEY=VALUE ...] [--flag=VALUE ...]\n\n'
          f'{job_flags.flag_values.get_help()}')
    return 0
  try:
    config, workdir = load_config(job_flags, argv)
  except UsageError as e:
    return fail(prog, str(e))
  with _log_to_stderr(), PreemptionGuard():  # the loop takes over the request, if any
    try:
      parallel.initialize_distributed(
          job_flags.distributed.value, coordinator_address=job_flags.coordinator_address.value,
          num_processes=job_flags.num_processes.value, process_id=job_flags.process_id.value)
      job(config, workdir)
    except USER_ERRORS as e:
      return fail(prog, str(e))
    except (CheckpointError, DivergedError) as e:  # no final checkpoint; a NaN/inf loss
      return fail(prog, str(e), code=1)
  return 0
