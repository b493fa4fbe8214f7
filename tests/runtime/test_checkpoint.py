"""Disk-aware checkpoints on real file systems (a tmpfs), with fault injection for the
failures a tmpfs cannot produce on demand (EDQUOT, failures surfacing only at wait)."""

import errno
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from hashjax.hashing import run as hash_trainer
from hashjax.runtime import checkpoint as ckpt_lib
from hashjax.runtime.checkpoint import Checkpointer
from hashjax.runtime.errors import CheckpointError
from tests import ROOT
from tests.hashing.test_job import _get_test_config, _params_at

ORBAX_ENOSPC = ("RESOURCE_EXHAUSTED: Error writing local file \"/x/_sharding\": Failed to write "
                "83 bytes to file 11: No space left on device [os_error_code='28']")


def _tree(seed=0, n=100_000):
  # Random values: orbax compresses, so constant arrays would take almost no space.
  return {'w': jnp.asarray(np.random.default_rng(seed).standard_normal(n), jnp.float32)}


def test_retention_and_restore(tmp_path):
  c = Checkpointer(str(tmp_path), max_to_keep=2)
  for step in (1, 2, 3):
    assert c.save(step, _tree(step))
  c.wait()
  assert c.all_steps() == [2, 3]
  np.testing.assert_array_equal(c.restore(3, _tree(0))['w'], _tree(3)['w'])
  c.close()


def test_budget_prunes_oldest_keeps_latest_and_best(tmp_path):
  probe = Checkpointer(str(tmp_path / 'probe'), max_to_keep=1)
  probe.save(0, _tree())
  probe.close()
  size = ckpt_lib.directory_bytes(str(tmp_path / 'probe'))
  # Room for the newest and the best checkpoint plus one save's estimate (size × 1.25 + slack).
  budget = 2 * size + int(size * 1.25) + 256 * 1024 + 4096
  c = Checkpointer(str(tmp_path / 'run'), max_to_keep=10, max_bytes=budget, best_metric='map')
  for step in range(1, 9):
    c.save(step, _tree(step), metrics={'map': 0.9 if step == 2 else 0.1 * step / 10})
    c.wait()
    assert ckpt_lib.directory_bytes(c.directory) <= budget
  steps = c.all_steps()
  assert 2 in steps and 8 in steps  # the best and the newest survive
  assert c.stats.pruned > 0 and c.stats.skipped == 0
  c.close()


def test_edquot_from_save_is_retried_once_then_skipped(tmp_path, monkeypatch):
  c = Checkpointer(str(tmp_path), async_save=False)
  real_save = c._manager.save
  failures = {'left': 1}

  def flaky_save(*args, **kwargs):
    if failures['left']:
      failures['left'] -= 1
      os.makedirs(os.path.join(c.directory, '7.orbax-checkpoint-tmp-123'), exist_ok=True)
      raise OSError(errno.EDQUOT, 'Disk quota exceeded')
    return real_save(*args, **kwargs)

  monkeypatch.setattr(c._manager, 'save', flaky_save)
  assert c.save(7, _tree())  # the retry succeeds
  c.wait()
  assert c.all_steps() == [7] and c.stats.failed_writes == 1
  assert not [n for n in os.listdir(c.directory) if 'tmp' in n]
  failures['left'] = 2  # fails again on retry: skipped, no exception
  assert not c.save(8, _tree())
  assert c.stats.skipped == 1 and c.all_steps() == [7]
  c.close()


def test_failure_that_surfaces_only_at_wait(tmp_path, monkeypatch):
  c = Checkpointer(str(tmp_path), async_save=True)
  c.save(1, _tree(1))
  c.wait()
  real_wait = c._manager.wait_until_finished
  state = {'fail': True}

  def wait_then_fail():
    real_wait()
    if state['fail'] and c._pending is not None:
      # What a failed async write leaves: the step only as an unfinished temporary folder.
      state['fail'] = False
      step = c._pending[0]
      os.rename(os.path.join(c.directory, str(step)),
                os.path.join(c.directory, f'{step}.orbax-checkpoint-tmp-1'))
      raise ValueError(ORBAX_ENOSPC)

  monkeypatch.setattr(c._manager, 'wait_until_finished', wait_then_fail)
  assert c.save(2, _tree(2))  # returns normally, as orbax's async save does
  assert c.save(3, _tree(3))  # the failure of 2 is handled here, 3 is written
  c.wait()
  assert c.stats.failed_writes == 1 and c.stats.skipped == 1
  assert c.all_steps() == [1, 3]
  c.close()


def test_final_checkpoint_is_written_when_only_the_estimate_says_no(tmp_path):
  c = Checkpointer(str(tmp_path), max_bytes=1000)
  assert not c.save(4, _tree())  # a non-final save over the estimate is skipped
  assert c.save(5, _tree(), final=True)  # the final one is tried, and the write succeeds
  assert c.all_steps() == [5] and c.stats.skipped == 1
  c.close()


def test_final_checkpoint_that_really_fails_deletes_older_ones_retries_then_says_what_to_free(
    tmp_path, monkeypatch):
  c = Checkpointer(str(tmp_path), async_save=False, best_metric='map')
  for step in (1, 2):
    c.save(step, _tree(step), metrics={'map': 0.9 if step == 1 else 0.1})
  real_save = c._manager.save
  failures = {'left': 1}

  def full_disk(*args, **kwargs):
    if failures['left']:
      failures['left'] -= 1
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(*args, **kwargs)

  monkeypatch.setattr(c._manager, 'save', full_disk)
  monkeypatch.setattr(ckpt_lib, 'free_bytes', lambda path: 0)  # and the disk looks full
  assert c.save(3, _tree(3), final=True)  # older ones (the best too) make room for the retry
  assert c.all_steps() == [3] and c.stats.pruned == 2
  failures['left'] = 2
  with pytest.raises(CheckpointError, match=r'the final checkpoint \(step 4\) could not be '
                                            r'written to .*No space left on device.*needs about '
                                            r'\d+ bytes and -?\d+ are free. The results files are '
                                            r'written. Free that much space .* no checkpoint is '
                                            r'left, so it trains again'):
    c.save(4, _tree(4), final=True)
  c.close()


def test_stale_tmp_dirs_are_removed_on_start(tmp_path):
  os.makedirs(tmp_path / '4.orbax-checkpoint-tmp-99' / 'x')
  c = Checkpointer(str(tmp_path))
  assert c.stale_removed == ['4.orbax-checkpoint-tmp-99'] and os.listdir(tmp_path) == []
  c.close()


# -- a real small file system -------------------------------------------------------------

def _mount_tmpfs(path, size):
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                        capture_output=True).returncode == 0


def test_training_on_a_tmpfs_sized_for_two_checkpoints(tmp_path):
  if os.environ.get('HASHJAX_IN_USERNS') != '1' and os.geteuid() != 0:
    # Not root: rerun this test in a private user + mount namespace, where mount works.
    proc = subprocess.run(['unshare', '-rm', sys.executable, '-m', 'pytest', '-q', '-p',
                           'no:cacheprovider', f'{__file__}::{test_training_on_a_tmpfs_sized_for_two_checkpoints.__name__}'],
                          env={**os.environ, 'HASHJAX_IN_USERNS': '1'}, capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode != 0 and 'unshare' in proc.stderr:
      pytest.skip(f'cannot mount a tmpfs: not root and unshare -rm failed: {proc.stderr[-200:]}')
    assert proc.returncode == 0, proc.stdout[-3000:]
    return
  mnt = tmp_path / 'small'
  mnt.mkdir()
  # One checkpoint of the test model (params + Adam moments) is ~1.7 MB on disk.
  if not _mount_tmpfs(mnt, '5m'):
    pytest.skip('mount -t tmpfs failed although running as root')
  try:
    workdir = str(mnt / 'run')
    cfg = _get_test_config(num_steps=40, checkpoint_every=2, eval_every=1000,
                           **{'checkpoint.max_to_keep': 5})
    results = hash_trainer.train_and_evaluate(cfg, workdir)
    assert results['step'] == 40
    rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
    stats = rows[-1]
    assert stats['checkpoint_pruned'] > 0  # the disk forced pruning below max_to_keep
    steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')))
    assert steps[-1] == 40  # within one interval of the end (here: the final step itself)
    assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]
    state = _params_at(workdir, 40, cfg)
    assert int(state.step) == 40
  finally:
    subprocess.run(['umount', '-l', str(mnt)], check=False)


def test_a_checkpoints_folder_deleted_during_the_run_is_created_again(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  c = Checkpointer(str(tmp_path / 'ckpt'), async_save=False)
  c.save(1, _tree(1))
  shutil.rmtree(tmp_path / 'ckpt')
  assert c.all_steps() == [] and c.latest_step() is None
  assert c.save(2, _tree(2))
  assert c.all_steps() == [2]
  restored = c.restore(2, _tree(2))
  np.testing.assert_array_equal(np.asarray(restored['w']), np.asarray(_tree(2)['w']))
  c.close()


def test_set_aside_moves_a_step_out_of_the_list_and_never_overwrites(tmp_path):
  c = Checkpointer(str(tmp_path), async_save=False)
  for step in (1, 2):
    c.save(step, _tree(step))
  assert c.set_aside(2) == str(tmp_path / 'damaged-2')
  c.save(2, _tree(2))
  assert c.set_aside(2) == str(tmp_path / 'damaged-2-1')
  assert c.all_steps() == [1] and os.path.isdir(tmp_path / 'damaged-2')
  c.close()


def test_orbax_error_records_about_a_handled_full_disk_are_dropped(tmp_path):
  import logging  # pylint: disable=g-import-not-at-top
  Checkpointer(str(tmp_path)).close()  # installs the filter on absl's logger
  seen = []
  handler = logging.Handler()
  handler.emit = lambda record: seen.append(record.getMessage())
  absl_logger = logging.getLogger('absl')
  absl_logger.addHandler(handler)
  try:
    try:
      raise ValueError(ORBAX_ENOSPC)
    except ValueError:
      absl_logger.error('Save Finalize thread (save_finalize) failed.', exc_info=True)
    absl_logger.error('_SignalingThread.run() raised an exception: %s', ORBAX_ENOSPC)
    absl_logger.warning('a warning about %s stays', ORBAX_ENOSPC)
    absl_logger.error('another error stays')
  finally:
    absl_logger.removeHandler(handler)
  assert seen == [f'a warning about {ORBAX_ENOSPC} stays', 'another error stays']


def test_asyncio_reports_of_sibling_tensorstore_failures_are_dropped(tmp_path):
  # Seen by benchmarks/fault_injection.py: after a damaged checkpoint was set aside, asyncio
  # logged the never-retrieved failures of its other reads, with a traceback each.
  import logging  # pylint: disable=g-import-not-at-top
  Checkpointer(str(tmp_path)).close()
  seen = []
  handler = logging.Handler()
  handler.emit = lambda record: seen.append(record.getMessage())
  asyncio_logger = logging.getLogger('asyncio')
  asyncio_logger.addHandler(handler)
  read_error = ('NOT_FOUND: Error opening "zarr" driver: Metadata at "a/.zarray" does not '
                'exist [tensorstore_spec=\'{"driver":"zarr"}\']')
  try:
    for error in (ValueError(read_error), ValueError('something else')):
      try:
        raise error
      except ValueError:
        asyncio_logger.error('Task exception was never retrieved', exc_info=True)
  finally:
    asyncio_logger.removeHandler(handler)
  assert seen == ['Task exception was never retrieved']  # only the other one stays


def test_reports_of_writes_into_a_failed_saves_removed_folder_are_dropped(tmp_path):
  # Seen by benchmarks/fault_injection.py: after a full disk failed the save of step 15 and
  # its temporary folder was removed, a write of the same save still in flight logged
  # NOT_FOUND for a file of that folder, with a traceback.
  import logging  # pylint: disable=g-import-not-at-top
  c = Checkpointer(str(tmp_path))
  c._after_failed_write(15, OSError(errno.ENOSPC, 'No space left on device'))  # pylint: disable=protected-access
  c.close()
  seen = []
  handler = logging.Handler()
  handler.emit = lambda record: seen.append(record.getMessage())
  absl_logger = logging.getLogger('absl')
  absl_logger.addHandler(handler)
  gone = f'{tmp_path}/15.orbax-checkpoint-tmp/default.orbax-checkpoint-tmp/ocdbt.process_0/'
  try:
    for where in (gone, f'{tmp_path}/20.orbax-checkpoint-tmp/'):
      try:
        raise ValueError(f'NOT_FOUND: Error writing "rng/0" in OCDBT database at local file '
                         f'"{where}"')
      except ValueError as e:
        absl_logger.error('_SignalingThread.run() raised an exception: %s', e, exc_info=True)
  finally:
    absl_logger.removeHandler(handler)
  assert len(seen) == 1 and '20.orbax-checkpoint-tmp' in seen[0]  # another save's stays


def test_unraisable_reports_of_a_failed_orbax_call_are_dropped(tmp_path, monkeypatch):
  # Seen by benchmarks/fault_injection.py: after a truncated checkpoint failed to restore,
  # its unfinished read coroutines were collected and each printed 'Exception ignored in'.
  import types  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', lambda u: seen.append(u.exc_value))
  Checkpointer(str(tmp_path)).close()  # wraps the hook above
  errors = [RuntimeError('Event loop is closed'),
            Exception('Encountered error while reading array index: (slice(0, 4, 1),). See '
                      'full TensorStore details: <bound method ...>'),
            ValueError('NOT_FOUND: Error opening "zarr" driver [tensorstore_spec=\'{}\']'),
            ValueError('something else')]
  for error in errors:
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(error), exc_value=error,
                                             exc_traceback=None, err_msg=None, object=None))
  assert seen == [errors[-1]]


def test_close_after_a_failed_write_does_not_raise_it_again(tmp_path, monkeypatch):
  c = Checkpointer(str(tmp_path))
  real_close = c._manager.close

  def close_reporting_the_failed_write():
    real_close()
    raise ValueError(ORBAX_ENOSPC)  # what orbax's close raised after a failed async save

  monkeypatch.setattr(c._manager, 'close', close_reporting_the_failed_write)
  c.close()


_RESTORE_DAMAGED = '''
import os, sys, time
import numpy as np
from hashjax.runtime.checkpoint import Checkpointer
c = Checkpointer(sys.argv[1], async_save=False)
tree = {f'a{i}': np.arange(1000.) + i for i in range(40)}  # many reads in flight
c.save(5, tree)
os.remove(os.path.join(sys.argv[1], '5', 'default', 'manifest.ocdbt'))
try:
  c.restore(5, tree)
except ValueError as e:
  print('restore failed:', str(e)[:40])
time.sleep(1)  # the reads still in flight land
'''


def test_a_failed_restore_leaves_no_closed_event_loop_tracebacks(tmp_path):
  # TensorStore reads still in flight after the failure report into orbax's closed asyncio
  # loop; before the fix each printed `RuntimeError: Event loop is closed` with a traceback.
  proc = subprocess.run([sys.executable, '-c', _RESTORE_DAMAGED, str(tmp_path)],
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith('restore failed: NOT_FOUND')
  assert 'Traceback' not in proc.stderr and 'Event loop is closed' not in proc.stderr
