"""benchmarks/device_check.sh, the prepared GPU check: its --dry_run runs every stage on the
CPU at the tiniest sizes and writes the report with every section (slow: ~2 minutes); a
spent budget and bad arguments."""

import os
import re
import subprocess
import sys

import pytest

from tests import ROOT

SCRIPT = os.path.join(ROOT, 'benchmarks', 'device_check.sh')
STAGES = ('environment', 'install', 'train.py (default config)', 'gan.py (default config)',
          'ceilings', 'train step float32', 'train step bfloat16', 'DCGAN step', 'retrieval')


def _check(*args, timeout=300):
  return subprocess.run(['bash', SCRIPT, *args], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHON=sys.executable), timeout=timeout)


def _sections(report):
  """{stage: its section's text} in the order of the report."""
  parts = re.split(r'^## (.+)$', report, flags=re.M)
  return dict(zip(parts[1::2], parts[2::2]))


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
  out = tmp_path_factory.mktemp('device_check') / 'report.md'
  proc = _check('--dry_run', f'--out={out}')
  return proc, out.read_text() if out.exists() else ''


@pytest.mark.slow
def test_dry_run_passes_every_stage(dry_run):
  proc, report = dry_run
  assert proc.returncode == 0, proc.stdout + proc.stderr + report
  sections = _sections(report)
  assert list(sections) == [*STAGES, 'summary']
  for stage in STAGES:
    assert re.search(r'^exit 0 after \d+ s$', sections[stage], re.M), sections[stage]
    assert re.search(rf'^\| {re.escape(stage)} \| 0 \| \d+ \|$', sections['summary'], re.M)
  assert 'every stage passed' in sections['summary']


@pytest.mark.slow
@pytest.mark.parametrize('stage,pattern', [
    ('environment', r'jax \d+\.\d+\.\d+ cpu'),
    ('install', r'skipped \(--dry_run\)'),
    ('train.py (default config)', r'eval: step=4 map@all=0\.\d+'),
    ('gan.py (default config)', r'eval: step=4 jsd_lower_bound='),
    ('ceilings', r'matmul 128x128x128 bfloat16: [\d.e+-]+ TFLOP/s'),
    ('train step float32', r'small_cnn 32px batch 8 float32: hashjax +[\d.]+ ex/s .*'
                           r'GFLOP/step, [\d.e+-]+ TFLOP/s, MFU [\d.]+% of 1 TFLOP/s'),
    ('train step bfloat16', r'small_cnn 32px batch 8 bfloat16: .* MFU [\d.]+% of 1 TFLOP/s'),
    ('DCGAN step', r'examples/s .* GFLOP/step, .* MFU [\d.]+% of 1 TFLOP/s'),
    ('retrieval', r'(?s)Q=32 N=1000 bits=64 topk=100: hashjax .* mAP=0\.\d+.*'
                  r'hamming_topk Q=32 N=1000 bits=64 topk=10'),
])
def test_dry_run_report_has_each_stages_figures(dry_run, stage, pattern):
  section = _sections(dry_run[1])[stage]
  assert re.search(pattern, section), section


def test_spent_budget_skips_stages_and_fails(tmp_path):
  out = tmp_path / 'report.md'
  proc = _check('--dry_run', '--budget=0', f'--out={out}', timeout=60)
  assert proc.returncode == 1
  sections = _sections(out.read_text())
  assert list(sections) == [*STAGES, 'summary']
  assert all('skipped: the 0 s budget is spent' in sections[stage] for stage in STAGES)
  assert 'some stages FAILED or were skipped' in sections['summary']


@pytest.mark.parametrize('arg,message', [('--bogus', "unknown argument '--bogus'"),
                                         ('--budget=soon', '--budget=soon is not a number of seconds'),
                                         ('--wheels=/no/such', '--wheels: no folder /no/such')])
def test_bad_argument_is_one_line_exit_2(arg, message):
  proc = _check(arg, timeout=60)
  assert proc.returncode == 2 and proc.stdout == ''
  assert proc.stderr.splitlines() == [f'device_check.sh: error: {message} (see --help)']
