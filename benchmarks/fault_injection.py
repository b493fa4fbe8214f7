"""Fault injection through the real CLIs: nothing lost, no traceback (run as root).

  python benchmarks/fault_injection.py [--runs=150] [--seed=0] [--jobs=hashnet,dcgan,folder]
      [--faults=kill,term,diskfull,damage,concurrent,datachange,codes,header] [--keep]
      [--tmpfs_size=64m] [--max_minutes=20] [--quick]

Each run trains a tiny job (`python train.py` on digits or on a folder of PNGs, or
`python gan.py`, from the repository root,
60 steps, a checkpoint every 5) in a workdir on a small tmpfs mounted here, as a sequence of
attempts with the same command until one finishes the run (up to 6 attempts with a random
fault each, then up to 2 without). A fault strikes at a random moment of the attempt: any
moment, or (more often) one after the job's first step, where it trains, saves and ends.

  kill        SIGKILL                                        expected: nothing lost
  term        SIGTERM                                        exit 0
  diskfull    a file takes the tmpfs's free space; removed   exit 0, or a one-line error
              after the attempt                              (e.g. the final checkpoint)
  damage      before an attempt: the newest checkpoint's     one warning, the folder moved
              data file truncated, its manifest.ocdbt or     to checkpoints/damaged-<step>
              _METADATA deleted, or a bit of any file
              flipped (once checksums.json is written)
  datachange  (folder job) before an attempt that resumes:   exit 2, one line ('changed
              an image deleted or added; undone after it     since the run')
  codes,      on a finished train.py run, the service: see   (benchmarks/serve_faults.py)
  header      benchmarks/serve_faults.py
  concurrent  a second process on the same workdir, within   one of the two exits 2 at
              a second of the first                          once ('in use by process ...')

Failures: a Python traceback on stderr of a process not killed by SIGKILL; "results lost":
a finished run (exit 0, not preempted) whose eval.json, metrics.jsonl (strict JSON; rows
without timings and checkpoint counters) or outputs (codes.npz; the GAN's last sample grid)
are missing or unlike those of an uninterrupted run of the same command (run first, per
job; the loop promises bit-identical resume on CPU); and, reported apart, an exit the fault
does not explain, a hang (timeout), two processes training on one workdir, a damaged
checkpoint not set aside, a finished run without its final checkpoint, a run that never
finished. Prints a line per run and one summary block; exit code 0 only with no results
lost and no traceback. Compiled programs are shared through JAX's persistent cache
(JAX_COMPILATION_CACHE_DIR, by default in the temp directory). `--quick`: 4 runs (~30 s).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import random
import shlex
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # pylint: disable=g-import-not-at-top,wrong-import-position
import serve_faults  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = ['--config.num_steps=60', '--config.checkpoint_every=5', '--config.log_every=5']
JOBS = {
    'hashnet': ('train.py', ['--config.bits=16', '--config.batch_size=32',
                             '--config.split.query_per_class=5',
                             '--config.split.train_per_class=20',
                             '--config.eval_every=100000'] + TINY),
    'folder': ('train.py', ['--config.dataset=folder:{data}', '--config.image_size=8',
                            '--config.bits=16', '--config.batch_size=32',
                            '--config.split.query_per_class=5',
                            '--config.split.train_per_class=20',
                            '--config.eval_every=100000'] + TINY),
    'dcgan': ('gan.py', ['--config.nz=16', '--config.ngf=8', '--config.ndf=8',
                         '--config.batch_size=16', '--config.num_samples=8',
                         '--config.eval_holdout=0', '--config.sample_every=100000'] + TINY),
}
NUM_STEPS = 60
IN_ATTEMPT = ('kill', 'term', 'diskfull', 'concurrent')
SERVE = ('codes', 'header')
KINDS = IN_ATTEMPT + ('damage', 'datachange') + SERVE
OTHER = ('unexpected exit', 'hung', 'two runs on one workdir',
         'damaged checkpoint not set aside', 'final checkpoint missing', 'did not finish')
FIRST_STEP = 'compiled and ran the first step'  # the loop's log line
SHOWN = 8


@dataclasses.dataclass
class Job:
  name: str
  script: str
  args: list[str]
  duration: float = 0.0  # seconds of an uninterrupted run
  startup: float = 0.0  # seconds until its first step ran
  reference: dict | None = None
  data: str = ''  # the folder job's image folder

  def command(self, workdir: str) -> list[str]:
    args = [a.replace('{data}', self.data) for a in self.args]
    return faults.python_command(self.script, args + [f'--workdir={workdir}'])


@dataclasses.dataclass
class Tally:
  """The counters of the summary, and the failures in the order found."""
  runs: dict = dataclasses.field(default_factory=dict)
  injected: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
  missed: int = 0
  attempts: int = 0
  processes: int = 0
  finished: int = 0
  stopped: str = ''  # why fewer runs than asked ran
  failures: list = dataclasses.field(default_factory=list)

  def fail(self, kind: str, where: str, fault: str, outcome, detail: str) -> None:
    """Records a failure; `outcome` (a faults.Outcome or None) gives the command, the exit
    and the last lines of stderr."""
    command = shlex.join(['python'] + outcome.command[1:]) if outcome else ''
    self.failures.append(dict(kind=kind, where=where, fault=fault, detail=detail,
                              command=command, status=outcome.status if outcome else '',
                              tail=outcome.tail() if outcome else []))

  def count(self, kind: str) -> int:
    return sum(f['kind'] == kind for f in self.failures)


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs', type=int, default=None,
                      help='runs (default 150, --quick 4); a run takes a few attempts')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--jobs', default=','.join(JOBS), help=f'of {",".join(JOBS)}')
  parser.add_argument('--faults', default=','.join(KINDS), help=f'of {",".join(KINDS)}')
  parser.add_argument('--keep', action='store_true', help='keep the workdirs, stderr logs '
                      'and a list of every failure (their folder is printed)')
  parser.add_argument('--tmpfs_size', default='64m', help="the tmpfs's size, as mount's")
  parser.add_argument('--quick', action='store_true', help='4 runs, one reference run per job')
  parser.add_argument('--max_minutes', type=float, default=20.0,
                      help='start no run after this many minutes (the summary says so)')
  args = parser.parse_args(argv)
  args.jobs, args.faults = args.jobs.split(','), args.faults.split(',')
  for name, given, known in (('--jobs', args.jobs, JOBS), ('--faults', args.faults, KINDS)):
    if not given or any(x not in known for x in given):
      parser.error(f'{name}={",".join(given)}: each of {", ".join(known)}')
  if not set(args.faults) & set(IN_ATTEMPT):
    parser.error(f'--faults needs one of {", ".join(IN_ATTEMPT)} (damage acts between them)')
  if args.runs is None:
    args.runs = 4 if args.quick else 150
  args.max_faulted = 3 if args.quick else 6
  return args


def child_env() -> dict[str, str]:
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
      tempfile.gettempdir(), f'hashjax-fault-injection-jax-cache-{os.getuid()}'))
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
  return env


def make_reference(job: Job, scratch: str, env: dict, twice: bool) -> None:
  """An uninterrupted run of the job (twice unless `twice` is False: the two must agree, and
  the second, with compiled programs cached, times the job)."""
  for i in range(2 if twice else 1):
    workdir = os.path.join(scratch, f'reference-{job.name}-{i}')
    started = time.monotonic()
    (out,), _, anchored = faults.attempt(
        job.command(workdir), 'none', faults.Moment(0.0, FIRST_STEP), scratch,
        os.path.join(scratch, f'reference-{job.name}-{i}'), 600, env)
    job.duration, job.startup = time.monotonic() - started, anchored or 0.0
    if out.status != '0' or out.traceback:
      sys.exit(f'fault_injection: error: the reference run of {job.name} failed '
               f'(exit {out.status}): {" | ".join(out.tail())}')
    results = faults.read_results(workdir)
    if job.reference is not None and results != job.reference:
      sys.exit(f'fault_injection: error: two uninterrupted runs of {job.name} differ; '
               'resume cannot be compared')
    job.reference = results
  print(f'reference {job.name}: {job.duration:.1f} s (first step after {job.startup:.1f} s), '
        f'eval {job.reference["eval.json"]}', flush=True)


def expected(outcome: faults.Outcome, fault: str) -> bool:
  """Whether the process's exit is what its fault explains."""
  status = outcome.status
  error_line = ': error: ' in outcome.stderr
  if status == '0':
    return True
  if status == 'killed':
    return fault == 'kill'
  if fault == 'diskfull':
    return status in ('1', '2') and error_line
  if fault == 'concurrent':
    return status == '2' and 'in use by' in outcome.stderr
  return False


def expected_refusal(outcome: faults.Outcome, fault: str) -> bool:
  """A resume on changed data must be refused (exit 2, one line), never run."""
  return outcome.status == '2' and 'changed since the run' in outcome.stderr


def judge(tally: Tally, outcomes: list, fault: str, where: str, label: str,
          timeout_s: float) -> None:
  """Records the attempt's failures: a traceback, a hang, an exit its fault does not
  explain, two processes that both ran on one workdir."""
  for o in outcomes:
    if o.status == 'timeout':
      tally.fail('hung', where, label, o, f'still running after {timeout_s:.0f} s; killed')
    elif o.traceback and not o.killed:
      tally.fail('traceback', where, label, o, f'exit {o.status} with a Python traceback')
    elif not (expected_refusal(o, fault) if fault == 'datachange' else expected(o, fault)):
      tally.fail('unexpected exit', where, label, o, f'exit {o.status} under fault {fault}')
  if fault == 'concurrent' and len(outcomes) == 2:
    a, b = outcomes  # b ran after a only if it found a's final checkpoint
    after = f'resuming from checkpoint step {NUM_STEPS} '
    if a.status == b.status == '0' and after not in b.stderr:
      tally.fail('two runs on one workdir', where, label, b,
                 'both processes trained at once (exit 0 each); none was refused')


def check_damage(tally: Tally, workdir: str, pending: list, outcomes: list, where: str,
                 label: str) -> list:
  """Damaged checkpoints still to be seen moved aside; each is checked after the first
  attempt that got past restoring (a process exited 0 or 1)."""
  if not pending or not any(o.status in ('0', '1') for o in outcomes):
    return pending
  names = set(os.listdir(os.path.join(workdir, 'checkpoints')))
  for step, what in pending:
    if not any(n == f'damaged-{step}' or n.startswith(f'damaged-{step}-') for n in names):
      tally.fail('damaged checkpoint not set aside', where, label, outcomes[0],
                 f'{what}; no checkpoints/damaged-{step} after the next attempt')
  return []


def pick_moment(fault: str, job: Job, rng: random.Random) -> faults.Moment:
  """Concurrent: the second process within a second of the first. Otherwise any moment of
  the run, or (more often) one after its first step: in training, saves and the end."""
  if fault == 'concurrent':
    return faults.Moment(rng.uniform(0.0, 1.0))
  if rng.random() < 0.4:
    return faults.Moment(rng.uniform(0.1, job.duration))
  return faults.Moment(rng.uniform(0.0, max(0.5, job.duration - job.startup)), FIRST_STEP)


def run_one(index: int, job: Job, args, ctx: dict, tally: Tally) -> str:
  """One run: attempts with faults until it finishes; returns its line for the log."""
  rng = random.Random(f'{args.seed}:{index}')  # a run's faults do not depend on the others'
  workdir = os.path.join(ctx['mnt'], f'run-{index:03d}')
  kinds = [k for k in args.faults if k in IN_ATTEMPT]
  planned = rng.randint(1, args.max_faulted)
  timeout_s = max(60.0, 8 * job.duration)
  pending, history, finished = [], [], None
  for number in range(planned + 2):
    fault = rng.choice(kinds) if number < planned else 'none'
    undo = None
    if (job.data and 'datachange' in args.faults and fault != 'none' and
        os.path.exists(os.path.join(workdir, 'data.json')) and
        faults.checkpoint_steps(workdir) and rng.random() < 0.3):
      fault = 'datachange'  # the attempt runs without another fault
      changed, undo = faults.change_folder(job.data, rng)
    label, damaged = fault if undo is None else f'datachange ({changed})', None
    if 'damage' in args.faults and number and not pending and rng.random() < 0.6:
      damaged = faults.damage_newest(workdir, rng)
      if damaged:
        tally.injected['damage'] += 1
        pending.append(damaged)
        label = f'damage ({damaged[1]}) + {fault}'
    moment = pick_moment(fault, job, rng)
    label += '' if fault == 'none' else f' at {moment}'
    where = f'run {index} ({job.name}) attempt {number + 1}'
    log = os.path.join(ctx['logs'], f'run-{index:03d}-{number + 1}')
    try:
      outcomes, injected, _ = faults.attempt(job.command(workdir), fault, moment, ctx['mnt'],
                                             log, timeout_s, ctx['env'])
    finally:
      if undo is not None:
        undo()
    injected |= undo is not None
    tally.attempts += 1
    tally.processes += len(outcomes)
    if fault != 'none':
      tally.injected[fault] += injected
      tally.missed += not injected
    judge(tally, outcomes, fault, where, label, timeout_s)
    pending = check_damage(tally, workdir, pending, outcomes, where, label)
    history.append(('damage+' if damaged else '') + fault + ':' +
                   '/'.join(o.status for o in outcomes) +
                   ('' if injected or fault == 'none' else '(missed)'))
    done = [o for o in outcomes if o.status == '0' and not o.preempted]
    if done:
      finished = done[0]
      break
  verdict = finish_run(tally, job, workdir, finished, f'run {index} ({job.name})',
                       ' '.join(history))
  if verdict == 'finished, results equal' and job.script == 'train.py':
    verdict += serve_checks(tally, workdir, args, ctx, rng, f'run {index} ({job.name})')
  return f'run {index} [{job.name}] {" ".join(history)} -> {verdict}'


def serve_checks(tally: Tally, workdir: str, args, ctx: dict, rng: random.Random,
                 where: str) -> str:
  """The service's faults on a finished train.py run (each with probability 1/2); returns
  their tokens for the run's line ('; serve codes:2 header:2/0/7of7')."""
  tokens = []
  for kind, check in (('codes', serve_faults.swapped_codes),
                      ('header', serve_faults.damaged_header)):
    if kind in args.faults and rng.random() < 0.5:
      token, failures = check(workdir, rng, ctx['env'],
                              os.path.join(ctx['logs'], f'{os.path.basename(workdir)}-serve'))
      tally.injected[kind] += 1
      tokens.append(token)
      for failure, detail, outcome in failures:
        tally.fail(failure, where, f'serve {kind}', outcome, detail)
  return f'; serve {" ".join(tokens)}' if tokens else ''


def finish_run(tally: Tally, job: Job, workdir: str, finished, where: str,
               history: str) -> str:
  """Checks a finished run's final checkpoint and results against the reference."""
  if finished is None:
    tally.fail('did not finish', where, history, None, 'no attempt finished the run')
    return 'did not finish'
  tally.finished += 1
  verdict = 'finished, results equal'
  if NUM_STEPS not in faults.checkpoint_steps(workdir):
    tally.fail('final checkpoint missing', where, history, finished,
               f'exit 0 without checkpoints/{NUM_STEPS}')
    verdict = 'finished without its final checkpoint'
  try:
    faults.compare(faults.read_results(workdir), job.reference)
  except faults.ResultError as e:
    tally.fail('results lost', where, history, finished, str(e))
    return 'RESULTS LOST'
  return verdict


def describe(failures: list[dict]) -> list[str]:
  """Failures as numbered entries: what, where, the faults, the command, stderr's end."""
  lines = []
  for i, f in enumerate(failures, 1):
    lines.append(f'  {i}. [{f["kind"]}] {f["where"]}: {f["detail"]}')
    lines.append(f'     faults: {f["fault"] or "none"}' +
                 (f'; exit {f["status"]}' if f['status'] else ''))
    if f['command']:
      lines.append(f'     command: {f["command"]}')
    lines += [f'     | {row[:300]}' for row in f['tail']]
  return lines


def summary(tally: Tally, seconds: float) -> list[str]:
  """The summary block."""
  lost, tracebacks = tally.count('results lost'), tally.count('traceback')
  other = {k: tally.count(k) for k in OTHER}
  kinds = ', '.join(f'{k} {n}' for k, n in tally.injected.items())
  lines = [
      '== fault injection summary ==',
      f'runs: {sum(tally.runs.values())} '
      f'({", ".join(f"{k} {n}" for k, n in tally.runs.items())})' +
      (f'; {tally.stopped}' if tally.stopped else ''),
      f'faults injected: {sum(tally.injected.values())} ({kinds})',
      f'faults missed: {tally.missed} (the process had ended before the moment)',
      f'attempts: {tally.attempts} (processes {tally.processes})',
      f'runs that finished: {tally.finished}',
      f'results lost: {lost}',
      f'tracebacks: {tracebacks}',
      f'other failures: {sum(other.values())} '
      f'({", ".join(f"{k} {n}" for k, n in other.items())})',
      f'time: {seconds:.0f} s',
      f'failures: {len(tally.failures)}' +
      (f' (the first {SHOWN}):' if len(tally.failures) > SHOWN else
       ':' if tally.failures else '')]
  lines += describe(tally.failures[:SHOWN])
  lines.append(f'result: {"PASS" if lost == tracebacks == 0 else "FAIL"} '
               f'(results lost {lost}, tracebacks {tracebacks})')
  return lines


def run_all(args, mnt: str, scratch: str, tally: Tally) -> None:
  env = child_env()
  jobs = [Job(name, *JOBS[name]) for name in args.jobs]
  for job in jobs:
    if any('{data}' in a for a in job.args):
      job.data = faults.make_image_folder(os.path.join(scratch, 'images'))
  for job in jobs:
    make_reference(job, scratch, env, twice=not args.quick)
  ctx = dict(mnt=mnt, logs=scratch, env=env)
  pick, stop_at = random.Random(args.seed), time.monotonic() + 60 * args.max_minutes
  for index in range(1, args.runs + 1):
    if time.monotonic() > stop_at:
      tally.stopped = f'stopped after {args.max_minutes:g} minutes (--max_minutes)'
      break
    job = pick.choice(jobs)
    before = copy.deepcopy(tally)
    try:
      line = run_one(index, job, args, ctx, tally)
    except KeyboardInterrupt:
      vars(tally).update(vars(before))  # the summary counts whole runs only
      raise
    tally.runs[job.name] = tally.runs.get(job.name, 0) + 1
    print(line, flush=True)
    workdir = os.path.join(mnt, f'run-{index:03d}')
    if args.keep and os.path.isdir(workdir):  # a run whose attempts all failed may have none
      shutil.copytree(workdir, os.path.join(scratch, f'run-{index:03d}-{job.name}'),
                      symlinks=True)
    shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  scratch = tempfile.mkdtemp(prefix='fault-injection-logs-')
  tally, started, interrupted = Tally(), time.monotonic(), False
  try:
    with faults.tmpfs(args.tmpfs_size) as mnt:
      try:
        run_all(args, mnt, scratch, tally)
      finally:
        faults.kill_live()
  except faults.MountError as e:
    print(f'fault_injection: error: {e}; run as root on Linux', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    tally.stopped = 'interrupted (Ctrl-C): the run in progress is not counted'
    interrupted = True
  finally:
    if not args.keep:
      shutil.rmtree(scratch, ignore_errors=True)
  print('\n'.join(summary(tally, time.monotonic() - started)))
  if args.keep:
    with open(os.path.join(scratch, 'failures.txt'), 'w') as f:
      f.write('\n'.join(describe(tally.failures)) + '\n')
    print(f'workdirs, stderr logs and failures.txt (every failure): {scratch}')
  if interrupted:
    return 130
  return 0 if tally.count('results lost') == tally.count('traceback') == 0 else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
