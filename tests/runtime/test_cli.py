"""train.py and gan.py as a user runs them, called in-process (`main(argv)` returns the exit
code): one-line errors with exit code 2, exit code 1 for a diverged run, flags parsed afresh
on every call, the default workdir, and a tiny real run. One subprocess run checks the
process boundary (the exit code reaching the shell)."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import gan
import train
from hashjax.runtime import cli
from hashjax.runtime.errors import DataError
from tests import ROOT

TINY = ['--config.num_steps=4', '--config.log_every=2', '--config.eval_every=4',
        '--config.checkpoint_every=4', '--config.bits=8', '--config.split.query_per_class=3',
        '--config.split.train_per_class=5', '--config.batch_size=16']


def _call(main, capsys, *args):
  """(exit code, stdout, stderr) of main([prog, *args])."""
  prog = 'gan.py' if main is gan.main else 'train.py'
  code = main([prog, *args])
  out, err = capsys.readouterr()
  return code, out, err


def _error_line(err, prog):
  assert 'Traceback' not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith(f'{prog}: error: '), err
  return last


@pytest.fixture
def jobs(monkeypatch):
  """Replaces both CLIs' jobs: [(config, workdir, extra)] of each call, nothing trained."""
  calls = []
  monkeypatch.setattr(train, '_train', lambda config, workdir: calls.append((config, workdir)))
  monkeypatch.setattr(gan.job, 'train_and_evaluate',
                      lambda config, workdir, reporter: calls.append((config, workdir)))
  monkeypatch.setattr(gan.sampling, 'sample', lambda config, workdir, num, out, attributes: (
      calls.append((config, workdir, num, out, attributes)) or 'grid.png'))
  return calls


def test_tiny_run_prints_metrics_and_writes_workdir(tmp_path, capsys):
  code, out, err = _call(train.main, capsys, f'--workdir={tmp_path}', *TINY)
  assert code == 0, err
  assert 'eval: step=4 map@all=' in out + err
  assert json.loads((tmp_path / 'eval.json').read_text())['step'] == 4
  assert json.loads((tmp_path / 'config.json').read_text())['bits'] == 8


@pytest.mark.parametrize('main,name', [(train.main, 'hashnet_digits'),
                                       (gan.main, 'dcgan_digits')])
def test_default_config_and_workdir(jobs, capsys, main, name):
  assert _call(main, capsys)[0] == 0
  (config, workdir), = jobs
  assert workdir == os.path.join('runs', name)
  assert config.dataset == 'digits' and ('bits' in config) == (name == 'hashnet_digits')


def test_overrides_apply_afresh_on_every_call(jobs, capsys):
  assert _call(train.main, capsys, '--config.bits=16', '--workdir=a')[0] == 0
  assert _call(train.main, capsys, '--config.split.query_per_class=7')[0] == 0
  assert _call(train.main, capsys, '--config=configs/hashnet_mnist.py', '--config.bits=64')[0] == 0
  assert _call(train.main, capsys)[0] == 0
  got = [(c.bits, c.split.query_per_class, c.dataset.split(':')[0], w) for c, w in jobs]
  assert got == [(16, 30, 'digits', 'a'), (32, 7, 'digits', 'runs/hashnet_digits'),
                 (64, 100, 'npz', 'runs/hashnet_mnist'), (32, 30, 'digits', 'runs/hashnet_digits')]
  assert all(a is not b for (a, _), (b, _) in zip(jobs, jobs[1:]))  # a fresh config per call


def test_none_overrides_the_num_query_protocol_from_the_command_line(tmp_path, capsys):
  tiny = [a for a in TINY if 'query_per_class' not in a]
  code, _, err = _call(train.main, capsys, f'--workdir={tmp_path}', *tiny,
                       '--config.split.query_per_class=None', '--config.split.num_query=40')
  assert code == 0, err
  split = json.loads((tmp_path / 'config.json').read_text())['split']
  assert split['query_per_class'] is None and split['num_query'] == 40
  with np.load(tmp_path / 'codes.npz') as codes:
    assert len(codes['query_codes']) == 40 and len(codes['db_codes']) == 1797 - 40


@pytest.mark.parametrize('args,field,want', [
    (['--config.map_topk=5', '--config.map_topk=None'], 'map_topk', None),
    (['--config.map_topk=None', '--config.map_topk=7'], 'map_topk', 7),  # the last one counts
    (['--config.split.train_per_class=None', '--config.split.num_train=50'],
     'split.train_per_class', None),
    (['--config.split.num_query=None'], 'split.num_query', None),
    (['--config.image_size=None'], 'image_size', None),
    (['--config.loss.alpha=None'], 'loss.alpha', None),
    (['--config.loss.class_num=None'], 'loss.class_num', None),
    (['--config.checkpoint.max_bytes=None'], 'checkpoint.max_bytes', None),
    (['--config.checkpoint.best_metric=None'], 'checkpoint.best_metric', None),
    (['--config.pretrained=None'], 'pretrained', None),  # None, not the string 'None'
    (['--config.class_list=None'], 'class_list', None),
    (['--config.split.query_per_class=12'], 'split.query_per_class', 12),
])
def test_none_sets_the_fields_that_may_be_none(jobs, capsys, args, field, want):
  code, _, err = _call(train.main, capsys, *args)
  assert code == 0, err
  (config, _), = jobs
  value = config
  for part in field.split('.'):
    value = value[part]
  assert value == want and (want is not None or value is None)


def test_none_in_a_gan_config(jobs, capsys):
  assert _call(gan.main, capsys, '--config.checkpoint.max_bytes=None',
               '-config.checkpoint.best_metric=None')[0] == 0
  (config, _), = jobs
  assert config.checkpoint.max_bytes is None and config.checkpoint.best_metric is None


@pytest.mark.parametrize('args,message', [
    (['--config.bits=None'], "--config.bits=None: bits cannot be None; it takes an int "
                             "(this config's value: 32)"),
    (['--config.loss.weighting=None'], '--config.loss.weighting=None: loss.weighting cannot be '
                                       "None; it takes a str (this config's value: 'balanced')"),
    (['--config.bitz=None'], "unknown config key 'bitz'"),
    (['--config.split.nope=None'], "unknown config key 'split.nope'"),
])
def test_none_for_a_field_that_cannot_be_none_is_one_line(jobs, capsys, args, message):
  code, _, err = _call(train.main, capsys, *args)
  assert code == 2 and message in _error_line(err, 'train.py') and not jobs


def test_an_error_leaves_nothing_for_the_next_call(capsys):
  code, _, err = _call(train.main, capsys, '--config.bits=4')
  assert code == 2 and 'bits=4 is out of range' in _error_line(err, 'train.py')
  # bits=4 would fail first if it were still set:
  code, _, err = _call(train.main, capsys, '--config.split.query_per_class=500')
  assert code == 2 and 'query_per_class=500 is impossible' in _error_line(err, 'train.py')


def test_gan_sample_flags_reach_the_job_and_reset(jobs, capsys, tmp_path):
  code, out, _ = _call(gan.main, capsys, '--mode=sample', '--num_samples=9', f'--out={tmp_path}/g.png',
                       '--config.nz=16', '--attributes=hair=blue')
  assert code == 0 and out.strip() == 'wrote grid.png'
  assert _call(gan.main, capsys, '--mode=sample')[0] == 0
  assert _call(gan.main, capsys)[0] == 0  # --mode is train again
  (c1, _, num1, out1, at1), (c2, _, num2, out2, at2), (c3, _) = jobs
  assert (c1.nz, num1, out1, at1) == (16, 9, f'{tmp_path}/g.png', 'hair=blue')
  assert (c2.nz, num2, out2, at2) == (100, 64, None, None) and c3.nz == 100


@pytest.fixture(scope='module')
def bad_npz(tmp_path_factory):
  path = tmp_path_factory.mktemp('npz') / 'bad.npz'
  np.savez(path, image=np.zeros((4, 8, 8), np.float32), label=np.zeros(4, np.int64))
  return str(path)


@pytest.mark.parametrize('args,message', [
    (['--config.bitz=48'], "unknown config key 'bitz'"),
    (['--config.augment.sharpen=1'], "unknown config key 'sharpen'; accepted under augment: "
                                     'brightness, contrast, crop, cutout, flip, noise, rotate'),
    (['--config.dataset=mosaic:npz:/no/such.npz'], "npz file '/no/such.npz' does not exist"),
    (['--config.bits=4'], 'bits=4 is out of range; accepted: integers 8..1024'),
    (['--config.bits=abc'], "--config.bits=abc"),
    (['--config=no/such/config.py'], "config file 'no/such/config.py' does not exist"),
    (['--config=no/such/config.py', '--config.bits=8'], "config file 'no/such/config.py'"),
    (['--config.split.query_per_class=500'], 'query_per_class=500 is impossible'),
    (['--config.dataset=npz:/no/such.npz'], "npz file '/no/such.npz' does not exist"),
    (['--config.dataset=tfds:smallnorb'], 'tfds build smallnorb'),
    (['--no_such_flag=1'], "Unknown command line flag 'no_such_flag'"),
    (['--mode=sample'], "Unknown command line flag 'mode'"),  # gan.py's flag, not train.py's
    (['stray'], "unexpected argument 'stray'"),
    (['--distributed=maybe'], 'value should be one of <auto|on|off>'),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
  code, _, err = _call(train.main, capsys, f'--workdir={tmp_path}', *args)
  assert code == 2 and message in _error_line(err, 'train.py')


def test_malformed_npz_exit_2(tmp_path, capsys, bad_npz):
  code, _, err = _call(train.main, capsys, f'--workdir={tmp_path}',
                       f'--config.dataset=npz:{bad_npz}')
  assert code == 2 and 'image must be uint8' in _error_line(err, 'train.py')


@pytest.mark.parametrize('args,message', [
    (['--mode=sample'], 'no checkpoint in '),
    (['--mode=sample', '--num_samples=0'], 'num_samples=0 is out of range; accepted: 1..4096'),
    (['--mode=bogus'], 'flag --mode=bogus: value should be one of <train|sample>'),
    (['--num_samples=many'], 'flag --num_samples=many'),
    (['--config.bits=32'], "unknown config key 'bits'"),
    (['--config.gan_loss=hinge'], "gan_loss='hinge'"),
])
def test_gan_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
  code, _, err = _call(gan.main, capsys, f'--workdir={tmp_path}', *args)
  assert code == 2 and message in _error_line(err, 'gan.py')


@pytest.mark.parametrize('error', [cli.DivergedError, cli.CheckpointError])
def test_diverged_or_unsaved_run_exits_1_with_the_message(monkeypatch, capsys, error):
  def job(config, workdir):
    raise error('loss is nan at step 7; the last good checkpoint is step 5')
  monkeypatch.setattr(train, '_train', job)
  code, _, err = _call(train.main, capsys)
  assert code == 1
  assert _error_line(err, 'train.py') == (
      'train.py: error: loss is nan at step 7; the last good checkpoint is step 5')


def _shown_line(err, text):
  """The line of err holding text as a terminal shows it: each carriage return (a progress
  bar's redraw) writes over the line from its start."""
  line, = [l for l in err.split('\n') if text in l]
  shown = ''
  for part in line.split('\r'):
    shown = part + shown[len(part):]
  return shown.rstrip()


def test_log_and_error_lines_are_not_appended_to_the_progress_bar(monkeypatch, capsys):
  def job(config, workdir):
    reporter = cli.ProgressReporter(keys=('loss',))
    reporter.start(total_steps=8, first_step=0)
    reporter.log({'step': 2, 'loss': 0.5})
    logging.getLogger('hashjax.runtime.loop').warning('could not write a checkpoint')
    reporter.log({'step': 4, 'loss': 0.25})
    raise DataError('image 3 cannot be decoded')  # the bar is still open
  monkeypatch.setattr(train, '_train', job)
  code, _, err = _call(train.main, capsys)
  assert code == 2 and 'loss=0.25' in err  # the bar was drawn
  assert _shown_line(err, 'could not write') == 'WARNING could not write a checkpoint'
  assert _shown_line(err, 'error:') == 'train.py: error: image 3 cannot be decoded'
  assert err.endswith('train.py: error: image 3 cannot be decoded\n')  # no bar drawn again
  logger = logging.getLogger('hashjax')  # as it was before the call: caplog sees its records
  assert logger.propagate and not logger.handlers


def test_help_lists_the_flags_and_exits_0(capsys):
  code, out, _ = _call(gan.main, capsys, '--help')
  assert code == 0 and '--mode' in out and "(default: 'configs/dcgan_digits.py')" in out


def test_exit_code_reaches_the_shell(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--config.bitz=48',
                         f'--workdir={tmp_path}'], cwd=tmp_path, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2 and proc.stdout == ''
  assert proc.stderr.strip().splitlines() == [
      'train.py: error: unknown config key \'bitz\' Did you mean "bits" instead of "bitz"?']
