"""The faults and checks of benchmarks/fault_injection.py: a small tmpfs, a file that takes
its free space, damaged checkpoints, one attempt of a CLI run (one or two processes) with a
fault at a chosen moment, and a finished run's results read strictly and compared.

Every process runs in its own session (Ctrl-C reaches only the driver), with a timeout;
`kill_live()` ends the ones still running when the driver stops early.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACEBACK = 'Traceback (most recent call last)'
FILLER = 'filler'
_PREEMPTED = re.compile(r'\bSIG(TERM|INT) received')
_live: set[subprocess.Popen] = set()
_VOLATILE = re.compile(r'^(examples_per_sec|checkpoint_\w+)$')  # differ on every resume


class MountError(Exception):
  """The tmpfs could not be mounted (not root, no mount(8), a container without the right)."""


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[str]:
  """A tmpfs of `size` (mount's syntax: 64m) on a new temporary folder; unmounted (lazily if
  busy) and removed on exit, also on error or Ctrl-C."""
  mnt = tempfile.mkdtemp(prefix='fault-injection-')
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', mnt],
                        capture_output=True, text=True, timeout=30, check=False)
  if done.returncode != 0:
    os.rmdir(mnt)
    raise MountError(f'cannot mount a tmpfs on {mnt}: {done.stderr.strip() or done.returncode}')
  try:
    yield mnt
  finally:
    if subprocess.run(['umount', mnt], capture_output=True, timeout=30,
                      check=False).returncode != 0:
      subprocess.run(['umount', '-l', mnt], capture_output=True, timeout=30, check=False)
    with contextlib.suppress(OSError):
      os.rmdir(mnt)


def fill_disk(mnt: str) -> int:
  """Takes the free space of the file system at `mnt` with one file; returns its bytes."""
  fd = os.open(os.path.join(mnt, FILLER), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  try:
    st = os.statvfs(mnt)
    with contextlib.suppress(OSError):
      os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
    chunk = 65536
    while chunk >= 512:  # the last bytes, which the job may have freed meanwhile
      try:
        os.write(fd, b'\0' * chunk)
      except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
          raise
        chunk //= 2
    return os.fstat(fd).st_size
  finally:
    os.close(fd)


def unfill(mnt: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(mnt, FILLER))


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the checkpoint folders (named by their step) under <workdir>/checkpoints."""
  try:
    names = os.listdir(os.path.join(workdir, 'checkpoints'))
  except FileNotFoundError:
    return []
  return sorted(int(n) for n in names if n.isdigit())


def damage_newest(workdir: str, rng: random.Random) -> tuple[int, str] | None:
  """Damages the newest checkpoint: cuts one of its data files (the largest of a `d/` folder)
  to less than half its size, deletes its item's `manifest.ocdbt` or `_METADATA`, or (once
  its checksums.json is written) flips one bit of any of its files.
  Returns (step, what was done), or None when there is no checkpoint or nothing to damage.

  Only what a restore reads: an OCDBT folder also holds superseded files, a per-process
  manifest and trailing bytes that restoring never reads, so damaging those changes nothing
  (checked by restoring: 240 cuts of this kind in 40 checkpoints all failed to restore)."""
  steps = checkpoint_steps(workdir)
  if not steps:
    return None
  folder = os.path.join(workdir, 'checkpoints', str(steps[-1]))
  found = {'truncate': [], 'manifest.ocdbt': [], '_METADATA': [], 'flip': []}
  checked = os.path.exists(os.path.join(folder, 'checksums.json'))
  for parent, _, names in os.walk(folder):
    base = os.path.basename(parent)
    found['flip'] += [os.path.join(parent, n) for n in names
                      if checked and n != 'checksums.json' and
                      os.path.getsize(os.path.join(parent, n))]
    if base == 'd' and names:
      found['truncate'].append(max((os.path.join(parent, n) for n in names),
                                   key=os.path.getsize))
    if not base.startswith('ocdbt.process_'):
      for name in sorted({'manifest.ocdbt', '_METADATA'} & set(names)):
        found[name].append(os.path.join(parent, name))
  kinds = sorted(k for k, paths in found.items() if paths)
  if not kinds:
    return None
  kind = rng.choice(kinds)
  path = rng.choice(sorted(found[kind]))
  shown = os.path.relpath(path, workdir)
  if kind == 'flip':
    return steps[-1], f'flipped {_flip_bit(path, rng)} of {shown}'
  if kind == 'truncate':
    size = os.path.getsize(path)
    keep = rng.randrange(max(1, size // 2))
    os.truncate(path, keep)
    return steps[-1], f'truncated {shown} ({size} -> {keep} B)'
  os.remove(path)
  return steps[-1], f'deleted {shown}'


def _flip_bit(path: str, rng: random.Random) -> str:
  """Flips one random bit of the file; says which."""
  offset, bit = rng.randrange(os.path.getsize(path)), rng.randrange(8)
  with open(path, 'r+b') as f:
    f.seek(offset)
    byte = f.read(1)[0]
    f.seek(offset)
    f.write(bytes([byte ^ (1 << bit)]))
  return f'bit {bit} of byte {offset}'


@dataclasses.dataclass
class Outcome:
  """One process of an attempt."""
  command: list[str]
  rc: int | None  # None: still running at its timeout (then killed)
  killed: bool  # we sent it SIGKILL
  stderr: str
  started: float
  ended: float

  @property
  def traceback(self) -> bool:
    return TRACEBACK in self.stderr

  @property
  def preempted(self) -> bool:
    return bool(_PREEMPTED.search(self.stderr))

  @property
  def status(self) -> str:
    """'0', '1', '2', 'killed' (by us), 'timeout', or for anything else the signal that
    ended the process ('SIGTERM') or 'rc=N'."""
    if self.rc is None:
      return 'timeout'
    if self.killed and self.rc == -signal.SIGKILL:
      return 'killed'
    if self.rc < 0:
      return signal.Signals(-self.rc).name
    return str(self.rc) if self.rc in (0, 1, 2) else f'rc={self.rc}'

  def tail(self, lines: int = 6) -> list[str]:
    """The last lines of stderr without progress bars; with a traceback, the first one's
    header and last lines (where it was raised, and what) instead."""
    text = self.stderr.replace('\r', '\n')
    rows = [r.rstrip() for r in text.splitlines() if r.strip() and '%|' not in r]
    if not self.traceback:
      return rows[-lines:]
    start = next(i for i, r in enumerate(rows) if TRACEBACK in r)
    end = next((i for i in range(start + 1, len(rows)) if not rows[i].startswith(' ')),
               len(rows) - 1)
    return rows[start:start + 1] + rows[max(start + 1, end - lines + 2):end + 1]


class Process:
  """A CLI process with its stderr in a file."""

  def __init__(self, command: list[str], log_path: str, env: dict[str, str]):
    self.command, self.log_path = command, log_path
    self.killed = False
    self.started = time.monotonic()
    with open(log_path, 'wb') as log:
      self.popen = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log,
                                    start_new_session=True)
    _live.add(self.popen)

  def running(self) -> bool:
    return self.popen.poll() is None

  def signal(self, sig: int) -> bool:
    """Sends `sig` if the process still runs; whether it did."""
    if not self.running():
      return False
    self.killed |= sig == signal.SIGKILL
    self.popen.send_signal(sig)
    return True

  def read(self) -> str:
    with open(self.log_path, errors='replace') as f:
      return f.read()

  def wait_for(self, text: str, deadline: float) -> float | None:
    """Seconds from the start until `text` appeared on stderr; None if the process ended
    (or the deadline passed) first."""
    while self.running() and time.monotonic() < deadline:
      if text in self.read():
        return time.monotonic() - self.started
      time.sleep(0.02)
    return None

  def wait(self, deadline: float) -> Outcome:
    try:
      rc = self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      self.signal(signal.SIGKILL)
      self.popen.wait(timeout=30)
      rc = None
    _live.discard(self.popen)
    return Outcome(self.command, rc, self.killed, self.read(), self.started, time.monotonic())


def kill_live() -> None:
  """SIGKILL to every process started here that still runs."""
  for popen in list(_live):
    with contextlib.suppress(OSError):
      popen.kill()
      popen.wait(timeout=30)
    _live.discard(popen)


@dataclasses.dataclass(frozen=True)
class Moment:
  """When a fault strikes: `delay` seconds after the start, or after `anchor` (a text the
  job writes on stderr, e.g. when its first step ran) appeared."""
  delay: float
  anchor: str | None = None

  def __str__(self):
    return f'{self.delay:.2f} s' + (f' after {self.anchor!r}' if self.anchor else '')


def attempt(command: list[str], fault: str, moment: Moment, mnt: str, log_prefix: str,
            timeout_s: float, env: dict[str, str]) -> tuple[list[Outcome], bool, float | None]:
  """Runs `command` once with `fault` ('none', 'kill', 'term', 'diskfull', 'concurrent') at
  `moment` (for 'concurrent': a second process on the same workdir starts then).
  Returns the processes' outcomes, whether the fault was injected (False when the process
  had ended first), and when the moment's anchor appeared (seconds after the start)."""
  first = Process(command, f'{log_prefix}.a.log', env)
  deadline = first.started + timeout_s
  procs, injected, anchored = [first], False, None
  try:
    if moment.anchor is not None:
      anchored = first.wait_for(moment.anchor, deadline)
    if moment.anchor is None or anchored is not None:
      try:
        first.popen.wait(timeout=moment.delay)
      except subprocess.TimeoutExpired:
        pass
    if fault == 'concurrent' and first.running():
      procs.append(Process(command, f'{log_prefix}.b.log', env))
      injected = True
    elif fault in ('kill', 'term'):
      injected = first.signal(signal.SIGKILL if fault == 'kill' else signal.SIGTERM)
    elif fault == 'diskfull' and first.running():
      fill_disk(mnt)
      injected = True
    outcomes = [p.wait(deadline + (p.started - first.started)) for p in procs]
    return outcomes, injected, anchored
  finally:
    unfill(mnt)


class ResultError(Exception):
  """A finished run's results are missing, unreadable or unlike the reference's."""


def _no_constant(name: str):
  raise ValueError(f'{name} is not JSON')


def read_json(path: str, lines: bool = False):
  """The JSON (or JSON lines) at `path`, strictly: NaN and Infinity are errors."""
  try:
    with open(path) as f:
      text = f.read()
    if lines:
      return [json.loads(row, parse_constant=_no_constant) for row in text.splitlines()]
    return json.loads(text, parse_constant=_no_constant)
  except FileNotFoundError:
    raise ResultError(f'{os.path.basename(path)} is missing') from None
  except ValueError as e:
    raise ResultError(f'{os.path.basename(path)} is not valid JSON ({e})') from None


def read_results(workdir: str) -> dict:
  """eval.json (without the GAN's `samples` path, which names the workdir), metrics.jsonl
  (without timings and checkpoint counters) and the outputs: codes.npz's arrays, the PNG
  that eval.json's `samples` names."""
  evaluation = read_json(os.path.join(workdir, 'eval.json'))
  rows = read_json(os.path.join(workdir, 'metrics.jsonl'), lines=True)
  outputs = {}
  samples = evaluation.pop('samples', None)
  if samples is not None:
    try:
      with open(samples, 'rb') as f:
        outputs['samples'] = f.read()
    except OSError as e:
      raise ResultError(f'the sample grid {samples} cannot be read ({e.strerror})') from None
  if os.path.exists(os.path.join(workdir, 'codes.npz')):
    try:
      with np.load(os.path.join(workdir, 'codes.npz')) as codes:
        outputs.update({f'codes.npz:{k}': codes[k].tobytes() for k in codes.files})
    except (OSError, ValueError) as e:
      raise ResultError(f'codes.npz cannot be read ({e})') from None
  metrics = [{k: v for k, v in r.items() if not _VOLATILE.match(k)} for r in rows]
  return {'eval.json': evaluation, 'metrics.jsonl': metrics, 'outputs': outputs}


def compare(results: dict, reference: dict) -> None:
  """Raises ResultError naming the first difference."""
  if results['eval.json'] != reference['eval.json']:
    raise ResultError(f"eval.json {results['eval.json']} != reference {reference['eval.json']}")
  steps = [r.get('step') for r in results['metrics.jsonl']]
  want = [r.get('step') for r in reference['metrics.jsonl']]
  if steps != want:
    raise ResultError(f'metrics.jsonl steps {steps} != reference {want}')
  for row, ref in zip(results['metrics.jsonl'], reference['metrics.jsonl']):
    if row != ref:
      raise ResultError(f'metrics.jsonl at step {row["step"]}: {row} != reference {ref}')
  for name in sorted(results['outputs'].keys() | reference['outputs'].keys()):
    if results['outputs'].get(name) != reference['outputs'].get(name):
      raise ResultError(f'output {name} differs from the reference')


def python_command(script: str, args: list[str]) -> list[str]:
  return [sys.executable, script] + args


def make_image_folder(root: str, classes: int = 3, per_class: int = 40) -> str:
  """scikit-learn's digits as PNG files under root/class<c>/ (the folder job's data)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  for c in range(classes):
    os.makedirs(os.path.join(root, f'class{c}'), exist_ok=True)
    for i, image in enumerate(digits.images[digits.target == c][:per_class]):
      Image.fromarray((image * 255 / 16).astype(np.uint8)).save(
          os.path.join(root, f'class{c}', f'{i:03d}.png'))
  return root


def change_folder(root: str, rng: random.Random) -> tuple[str, callable]:
  """Deletes one image of the folder (moved out) or adds one (a copy under a new name);
  returns (what was done, the function that undoes it)."""
  paths = sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)
  path = rng.choice(paths)
  if rng.random() < 0.5:
    aside = f'{root}.aside-{os.path.basename(path)}'
    os.replace(path, aside)
    return f'deleted {os.path.relpath(path, root)}', lambda: os.replace(aside, path)
  added = os.path.join(os.path.dirname(path), 'zz-added.png')
  with open(path, 'rb') as src, open(added, 'wb') as dst:
    dst.write(src.read())
  return f'added {os.path.relpath(added, root)}', lambda: os.remove(added)
