import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hashjax.runtime import workdir as workdir_lib
from hashjax.runtime.errors import WorkdirError
from tests import ROOT


def test_a_file_or_a_path_under_a_file_is_one_line(tmp_path):
  (tmp_path / 'f').write_text('x')
  with pytest.raises(WorkdirError, match=r"--workdir '.*f' is a file, not a directory"):
    with workdir_lib.hold(str(tmp_path / 'f')):
      pass
  with pytest.raises(WorkdirError, match=r"--workdir '.*f/run' lies under a file"):
    with workdir_lib.hold(str(tmp_path / 'f' / 'run')):
      pass


def test_a_run_refused_before_writing_anything_leaves_no_workdir_behind(tmp_path):
  new, old = tmp_path / 'new', tmp_path / 'old'
  old.mkdir()
  (old / 'notes.txt').write_text('mine')
  for workdir in (new, old):
    with pytest.raises(ValueError, match='bad settings'):
      with workdir_lib.hold(str(workdir)):
        raise ValueError('bad settings')
  assert not new.exists()  # made by the refused run: removed with its lock
  assert sorted(os.listdir(old)) == ['notes.txt', 'run.lock']  # not made by it: left alone
  with pytest.raises(ValueError):
    with workdir_lib.hold(str(new)):
      (new / 'metrics.jsonl').write_text('{}')
      raise ValueError('after writing')
  assert sorted(os.listdir(new)) == ['metrics.jsonl', 'run.lock']  # something written: kept


def test_a_held_workdir_refuses_a_second_run_naming_the_holder(tmp_path):
  with workdir_lib.hold(str(tmp_path)):
    with pytest.raises(WorkdirError, match=rf"is in use by process {os.getpid()} on "):
      with workdir_lib.hold(str(tmp_path)):
        pass
  with workdir_lib.hold(str(tmp_path)):  # released when the first run ended
    pass


def test_a_killed_holder_does_not_keep_the_workdir(tmp_path):
  code = textwrap.dedent(f'''
      import sys, time
      from hashjax.runtime import workdir
      with workdir.hold({str(tmp_path)!r}):
        print('held', flush=True)
        time.sleep(60)
  ''')
  proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True)
  try:
    assert proc.stdout.readline().strip() == 'held'
    with pytest.raises(WorkdirError, match=f'in use by process {proc.pid} '):
      with workdir_lib.hold(str(tmp_path)):
        pass
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  with workdir_lib.hold(str(tmp_path)):
    pass


def _write_config(tmp_path, config):
  (tmp_path / 'config.json').write_text(json.dumps(config))


def test_check_resume_names_every_changed_key_outside_the_resumable_ones(tmp_path):
  old = {'bits': 16, 'num_steps': 10, 'loss': {'name': 'hashnet', 'alpha': None},
         'checkpoint': {'max_to_keep': 2}, 'learning_rate': 0.1}
  _write_config(tmp_path, old)
  resumable = frozenset({'num_steps', 'checkpoint', 'learning_rate'})
  same = {**old, 'num_steps': 20, 'checkpoint': {'max_to_keep': 5}, 'learning_rate': 0.01}
  workdir_lib.check_resume(str(tmp_path), same, resumable)
  changed = {**old, 'bits': 32, 'loss': {'name': 'dhn', 'alpha': None}, 'extra': (1, 2)}
  with pytest.raises(WorkdirError, match=r"with settings its checkpoints were not trained "
                                         r"with: bits \(16 → 32\), extra \('<absent>' → \[1, 2\]\), "
                                         r"loss.name \('hashnet' → 'dhn'\); resume with"):
    workdir_lib.check_resume(str(tmp_path), changed, resumable)
  assert json.loads((tmp_path / 'config.json').read_text()) == old


def test_check_resume_reads_a_setting_older_runs_lack_as_the_value_they_had(tmp_path):
  _write_config(tmp_path, {'bits': 16})  # made before 'split.stage' existed
  added = {'split.stage': 'all'}
  workdir_lib.check_resume(str(tmp_path), {'bits': 16, 'split': {'stage': 'all'}},
                           frozenset(), added)
  with pytest.raises(WorkdirError, match=r"split.stage \('all' → 'new'\)"):
    workdir_lib.check_resume(str(tmp_path), {'bits': 16, 'split': {'stage': 'new'}},
                             frozenset(), added)


def test_check_resume_without_config_json_checks_nothing_and_a_broken_one_is_one_line(tmp_path):
  workdir_lib.check_resume(str(tmp_path), {'bits': 16}, frozenset())
  (tmp_path / 'config.json').write_text('{"bits": 1')
  with pytest.raises(WorkdirError, match=r'config.json cannot be read'):
    workdir_lib.check_resume(str(tmp_path), {'bits': 16}, frozenset())


def test_a_read_only_workdir_is_one_line(tmp_path):
  mnt = tmp_path / 'ro'
  mnt.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', str(mnt)],
                    capture_output=True).returncode != 0:
    pytest.skip('mounting a read-only tmpfs needs root')
  try:
    with pytest.raises(WorkdirError, match=r"cannot create --workdir '.*ro/run': Read-only file "
                                           r'system'):
      with workdir_lib.hold(str(mnt / 'run')):
        pass
    with pytest.raises(WorkdirError, match=r"cannot write in --workdir '.*ro': Read-only file "
                                           r'system'):
      with workdir_lib.hold(str(mnt)):
        pass
  finally:
    subprocess.run(['umount', '-l', str(mnt)], check=False)


def test_a_full_disk_only_loses_the_holder_note(tmp_path, monkeypatch):
  def full(*args):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(os, 'pwrite', full)
  with workdir_lib.hold(str(tmp_path)):  # neither taking nor releasing the lock fails
    with pytest.raises(WorkdirError, match='is in use by another process'):
      with workdir_lib.hold(str(tmp_path)):
        pass
