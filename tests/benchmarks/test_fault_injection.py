"""benchmarks/fault_injection.py --quick as a subprocess: its summary block has every line
and its counters add up. Not that nothing failed: the script's own exit code says that."""

import os
import re
import subprocess
import sys

import pytest

from tests import ROOT

SCRIPT = os.path.join(ROOT, 'benchmarks', 'fault_injection.py')
KINDS = ('kill', 'term', 'diskfull', 'concurrent', 'damage', 'datachange', 'codes', 'header')
_RUN_LINE = re.compile(r'^run (\d+) \[(\w+)\] (.+) -> (.+)$')
_ATTEMPT = re.compile(r'^(damage\+)?(\w+):([^()]+)(\(missed\))?$')


def _counts(text: str) -> dict[str, int]:
  """'kill 3, term 0' -> {'kill': 3, 'term': 0}."""
  return {k: int(n) for k, n in re.findall(r'([a-z][a-z ]*?) (\d+)(?:,|$)', text)}


def _field(block: str, name: str) -> tuple[int, str]:
  """The number after 'name: ' on its line, and the rest of that line."""
  match = re.search(rf'^{name}: (\d+)(.*)$', block, re.M)
  assert match, f'no line {name!r} in the summary:\n{block}'
  return int(match.group(1)), match.group(2)


@pytest.mark.skipif(os.name != 'posix' or os.geteuid() != 0,
                    reason='mounts a tmpfs (mount -t tmpfs): needs root on Linux')
@pytest.mark.slow
def test_quick_run_prints_a_summary_whose_counters_add_up():
  done = subprocess.run([sys.executable, SCRIPT, '--quick', '--seed=0', '--jobs=hashnet'],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
  if done.returncode == 2 and 'cannot mount a tmpfs' in done.stderr:
    pytest.skip(done.stderr.strip())
  assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-2000:]
  check_summary(done.stdout, done.returncode, runs=4, jobs={'hashnet': 4})


def check_summary(out: str, returncode: int, runs: int, jobs: dict[str, int]) -> None:
  """The summary block of `out` has every line, its counters add up, and they agree with
  the per-run lines above it (one token per attempt: `[damage+]FAULT:EXIT[(missed)]`)."""
  block = out[out.index('== fault injection summary =='):]
  n, per_job = _field(block, 'runs')
  assert n == runs and _counts(per_job.strip(' ()')) == jobs
  injected, per_kind = _field(block, 'faults injected')
  per_kind = _counts(per_kind.strip(' ()'))
  assert set(per_kind) == set(KINDS) and sum(per_kind.values()) == injected
  missed, _ = _field(block, 'faults missed')
  attempts, processes = _field(block, 'attempts')
  finished, _ = _field(block, 'runs that finished')
  lost, _ = _field(block, 'results lost')
  tracebacks, _ = _field(block, 'tracebacks')
  other, parts = _field(block, 'other failures')
  assert sum(_counts(parts.strip(' ()')).values()) == other
  failures, _ = _field(block, 'failures')
  assert failures == lost + tracebacks + other
  assert finished <= runs and lost <= finished
  assert runs <= attempts <= int(re.search(r'processes (\d+)', processes).group(1))
  assert len(re.findall(r'^  \d+\. \[', block, re.M)) == min(failures, 8)
  verdict = 'PASS' if lost == tracebacks == 0 else 'FAIL'
  assert f'result: {verdict} (results lost {lost}, tracebacks {tracebacks})' in block
  assert returncode == (0 if verdict == 'PASS' else 1)

  # One line per run, one token per attempt: they add up to the summary's counters.
  lines = [_RUN_LINE.match(l) for l in out[:out.index('== fault')].splitlines()]
  lines = [m for m in lines if m]
  assert [int(m.group(1)) for m in lines] == list(range(1, runs + 1))
  tokens = [_ATTEMPT.match(t) for m in lines for t in m.group(3).split()]
  assert all(tokens) and len(tokens) == attempts
  seen = dict.fromkeys(KINDS, 0)
  for t in tokens:
    seen['damage'] += bool(t.group(1))
    if t.group(2) != 'none' and not t.group(4):
      seen[t.group(2)] += 1
  for m in lines:  # the service's faults, after a finished train.py run: '; serve codes:2 ...'
    for token in m.group(4).partition('; serve ')[2].split():
      seen[token.split(':')[0]] += 1
  assert seen == per_kind
  assert sum(bool(t.group(4)) for t in tokens) == missed
  assert sum(m.group(4).startswith('finished') or m.group(4) == 'RESULTS LOST'
             for m in lines) == finished
