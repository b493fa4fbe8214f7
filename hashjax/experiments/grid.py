"""A grid of independent work units, run in one process or in several, each unit's result
saved as soon as it finishes (`run`), and the command-line flags every grid shares
(`argument_parser`: --workdir, --workers, --resume).

  units        a list of keys: str, int, float, bool, None or tuples of them (hashable and
               JSON-able), e.g. ('mnist', 'hashnet', 48, 0).
  run_unit     run_unit(key) → a JSON-able dict. With workers > 1 it is pickled into each
               worker process: a module-level function, or a functools.partial of one.
  <dir>/<name>.json  one file per finished unit, {'unit': key, 'result': dict}; `name`
               joins the key's parts with '-' (`unit_name`). With resume=True the units
               that have a file are not run again.

A unit that raises stops the grid with a `GridError` naming it in one line; the units
finished before it stay saved, so a rerun with resume=True continues from there.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
from typing import Any, Callable, Hashable, Sequence

from hashjax.runtime import cli
from hashjax.runtime.errors import DataError

Key = Hashable
SINGLE_THREADED_XLA = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'


class GridError(RuntimeError):
  """A unit that failed, or worker processes that died; the message names the unit."""


def unit_name(key: Key) -> str:
  """The file name stem of a unit: its parts joined by '-', other than [A-Za-z0-9_.=+]
  replaced by '_' (('mnist', 'hashnet', 48, 0) → 'mnist-hashnet-48-0')."""
  parts = key if isinstance(key, tuple) else (key,)
  return '-'.join(re.sub(r'[^A-Za-z0-9_.=+]', '_', str(p)) for p in parts)


def _as_key(value: Any) -> Key:
  """A key read back from JSON: lists become tuples."""
  return tuple(_as_key(v) for v in value) if isinstance(value, list) else value


def _check_units(units: Sequence[Key]) -> None:
  names: dict[str, Key] = {}
  for key in units:
    try:
      same = _as_key(json.loads(json.dumps(key))) == key
    except (TypeError, ValueError):
      same = False
    if not same:
      raise ValueError(f'unit {key!r} is not a JSON-able key; accepted: str, int, float, '
                       'bool, None or tuples of them')
    name = unit_name(key)
    if name in names:
      raise ValueError(f'units {names[name]!r} and {key!r} share the file name {name}.json')
    names[name] = key


def unit_path(directory: str, key: Key) -> str:
  return os.path.join(directory, unit_name(key) + '.json')


def saved_results(directory: str, units: Sequence[Key]) -> dict[Key, dict[str, Any]]:
  """{key: result} of the units that have a result file in `directory`."""
  out = {}
  for key in units:
    path = unit_path(directory, key)
    if not os.path.exists(path):
      continue
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise GridError(f'unit file {path} is unreadable ({e}); delete it to rerun the '
                      'unit') from None
    if _as_key(saved.get('unit')) == key:
      out[key] = saved['result']
  return out


def _save(directory: str, key: Key, result: dict[str, Any]) -> None:
  path = unit_path(directory, key)
  with open(path + '.tmp', 'w') as f:
    json.dump({'unit': key, 'result': result}, f)
  os.replace(path + '.tmp', path)


def _failure(key: Key, error: str, directory: str) -> GridError:
  return GridError(' '.join(f'unit {unit_name(key)} failed: {error} (finished units are '
                            f'saved in {directory}; rerun with --resume)'.split()))


def _describe(e: BaseException) -> str:
  return f'{type(e).__name__}: {e}'


def run(units: Sequence[Key], run_unit: Callable[[Key], dict[str, Any]], directory: str, *,
        workers: int = 1, resume: bool = False,
        progress: Callable[[Key, dict[str, Any]], None] = lambda key, result: None
        ) -> dict[Key, dict[str, Any]]:
  """Runs every unit (those saved in `directory` too, unless resume) and saves each result.

  workers > 1 runs units in that many spawned processes, each pinned to one core with
  single-threaded XLA (for small CNNs sooner than one process using every core:
  docs/PERFORMANCE.md). Results are the same up to float summation order.

  Returns:
    {key: result} for every unit, in the order of `units`. `progress(key, result)` is
    called in this process as each unit finishes (not for the resumed ones).

  Raises:
    GridError: a unit raised (the first one to fail is named) or the workers died.
  """
  if not isinstance(workers, int) or workers < 1:
    raise ValueError(f'workers={workers!r}; accepted: an integer >= 1')
  _check_units(units)
  os.makedirs(directory, exist_ok=True)
  done = saved_results(directory, units) if resume else {}
  todo = [key for key in units if key not in done]

  def finish(key, result):
    _save(directory, key, result)
    done[key] = result
    progress(key, result)

  if workers == 1 or len(todo) <= 1:
    for key in todo:
      try:
        result = run_unit(key)
      except Exception as e:  # pylint: disable=broad-except  # any failure: name the unit
        raise _failure(key, _describe(e), directory) from e
      finish(key, result)
  else:
    _run_in_workers(todo, run_unit, workers, directory, finish)
  return {key: done[key] for key in units}


def _worker(core: int | None, run_unit, tasks, results) -> None:
  """A worker process: pinned to `core`, runs (index, key) tasks until None."""
  if core is not None and hasattr(os, 'sched_setaffinity'):
    os.sched_setaffinity(0, {core})
  while (task := tasks.get()) is not None:
    index, key = task
    try:
      results.put((index, run_unit(key), None))
    except Exception as e:  # pylint: disable=broad-except  # the parent names the unit
      results.put((index, None, _describe(e)))


def _start_workers(ctx, run_unit, workers: int, tasks, results) -> list[Any]:
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []
  old_flags = os.environ.get('XLA_FLAGS')
  # Read by the children when they import JAX.
  os.environ['XLA_FLAGS'] = f'{old_flags or ""} {SINGLE_THREADED_XLA}'.strip()
  try:
    procs = []
    for w in range(workers):
      core = cores[w % len(cores)] if len(cores) >= workers else None
      procs.append(ctx.Process(target=_worker, args=(core, run_unit, tasks, results),
                               daemon=True))
      procs[-1].start()
    return procs
  finally:
    if old_flags is None:
      os.environ.pop('XLA_FLAGS')
    else:
      os.environ['XLA_FLAGS'] = old_flags


def _next_result(results, procs):
  while True:
    try:
      return results.get(timeout=10)
    except queue.Empty:
      if not any(p.is_alive() for p in procs):  # killed, e.g. out of memory
        raise GridError(f'the {len(procs)} worker processes exited with units left; the '
                        'finished units are saved: rerun with --resume') from None


def _run_in_workers(todo, run_unit, workers: int, directory: str, finish) -> None:
  import multiprocessing  # pylint: disable=g-import-not-at-top
  ctx = multiprocessing.get_context('spawn')  # forking a process that has started JAX is unsafe
  tasks, results = ctx.Queue(), ctx.Queue()
  for index, key in enumerate(todo):
    tasks.put((index, key))
  for _ in range(workers):
    tasks.put(None)
  procs = _start_workers(ctx, run_unit, min(workers, len(todo)), tasks, results)
  try:
    for _ in todo:
      index, result, error = _next_result(results, procs)
      if error is not None:
        raise _failure(todo[index], error, directory)
      finish(todo[index], result)
  finally:
    for p in procs:
      if p.is_alive():
        p.terminate()
      p.join()


def write_json(path: str, value: dict[str, Any]) -> None:
  """Writes `value` to `path` atomically (a temporary file, then a rename)."""
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f)
  os.replace(path + '.tmp', path)


def run_recorded(prog: str, args, argv: list[str], results_path: str, units: Sequence[Key],
                 run_unit: Callable[[Key], dict[str, Any]], fixed: dict[str, Any],
                 collect: Callable[[dict], dict[str, Any]],
                 describe: Callable[[Key, dict[str, Any]], list[str]]) -> dict[str, Any]:
  """Runs an experiment's units (`run`) and rewrites results.json after each one.

  results.json = collect({key: result} of the units done, in unit order) + `fixed` + the
  command, date, versions and plan + 'sessions' (one per invocation: date, workers,
  wall_seconds, cells = lines `describe` gave) and their total 'wall_seconds'. With
  args.resume the units saved in args.workdir count as done and the earlier sessions are
  kept. `describe(key, result)` → the lines printed as a unit finishes.

  Returns:
    The final results. Raises GridError.
  """
  import datetime  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  done = saved_results(args.workdir, units) if args.resume else {}
  previous = {}
  if args.resume and os.path.exists(results_path):
    with open(results_path) as f:
      previous = json.load(f)
  start, date = time.time(), datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
  fixed = {**fixed, 'command': f'python -m hashjax.experiments.{prog} ' + ' '.join(argv),
           'date': date, 'versions': versions(), 'plan': args.plan}
  sessions, lines = list(previous.get('sessions') or []), []

  def save():
    this = {'date': date, 'workers': args.workers, 'wall_seconds': time.time() - start,
            'cells': len(lines)}
    write_json(results_path, {**collect({k: done[k] for k in units if k in done}), **fixed,
                              'sessions': sessions + [this], 'wall_seconds': sum(
                                  s['wall_seconds'] for s in sessions + [this])})

  def progress(key, result):
    done[key] = result
    for line in describe(key, result):
      lines.append(line)
      print(f'[{time.time() - start:7.0f} s] {line}', flush=True)
    save()

  run(units, run_unit, args.workdir, workers=args.workers, resume=args.resume,
      progress=progress)
  save()
  with open(results_path) as f:
    return json.load(f)


def results_or_run(prog: str, render_only: bool, results_path: str,
                   run_grid: Callable[[], dict[str, Any]]) -> dict[str, Any] | int:
  """An experiment's results: results.json as it is (render_only), else `run_grid()`'s.
  Returns the exit code instead after a one-line error: 2 for no results.json or data that
  cannot be opened (a DataError before any unit), 1 for a failed unit (GridError)."""
  if render_only:
    if not os.path.exists(results_path):
      return cli.fail(prog, f'--render_only: {results_path} does not exist')
    with open(results_path) as f:
      return json.load(f)
  try:
    return run_grid()
  except DataError as e:
    return cli.fail(prog, str(e))
  except GridError as e:
    return cli.fail(prog, str(e), code=1)


def argument_parser(prog: str, description: str, workdir: str) -> argparse.ArgumentParser:
  """A parser with the flags of every grid: --workdir (the unit files), --workers, --resume.
  Check them after parsing with `check_arguments`."""
  parser = cli.OneLineParser(prog=prog, description=description)
  parser.add_argument('--workdir', default=workdir,
                      help=f'folder of the per-unit result files (default {workdir})')
  parser.add_argument('--workers', type=int, default=1,
                      help='processes, each on one core with single-threaded XLA')
  parser.add_argument('--resume', action='store_true',
                      help='keep the units already saved in --workdir and run the rest')
  return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if args.workers < 1:
    parser.error(f'--workers={args.workers}; accepted: an integer >= 1')


def versions() -> dict[str, str]:
  """What results.json records of the software and machine a grid ran on."""
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  out = {'python': platform.python_version()}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'scikit-learn', 'matplotlib'):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      out[name] = 'absent'
  out['devices'] = f'{jax.device_count()} × {jax.devices()[0].platform}'
  out['cpu_count'] = str(os.cpu_count())
  return out
