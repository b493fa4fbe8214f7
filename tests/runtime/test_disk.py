import errno
import os

import pytest

from hashjax.runtime import disk
from hashjax.runtime.disk import is_disk_full_error

ORBAX_ENOSPC = ("RESOURCE_EXHAUSTED: Error writing local file \"/x/_sharding\": Failed to write "
                "83 bytes to file 11: No space left on device [os_error_code='28']")


@pytest.mark.parametrize('error,expected', [
    (OSError(errno.ENOSPC, 'No space left on device'), True),
    (OSError(errno.EDQUOT, 'Disk quota exceeded'), True),
    (ValueError(ORBAX_ENOSPC), True),
    (ValueError(ORBAX_ENOSPC.replace("'28'", "'122'")), True),
    (ValueError(ORBAX_ENOSPC.replace("'28'", "'5'")), False),
    (OSError(errno.EACCES, 'Permission denied'), False),
    (ValueError('shapes do not match'), False),
])
def test_is_disk_full_error(error, expected):
  assert is_disk_full_error(error) is expected
  try:
    try:
      raise error
    except (OSError, ValueError) as inner:
      raise RuntimeError('wrapped') from inner
  except RuntimeError as outer:
    assert is_disk_full_error(outer) is expected


def test_writes_besides_checkpoints_warn_instead_of_crashing(tmp_path, monkeypatch):
  path = str(tmp_path / 'metrics.jsonl')
  assert disk.append_or_warn(path, '{"step": 1}\n')

  def full(tmp):
    with open(tmp, 'w') as f:
      f.write('partial')
    raise OSError(errno.ENOSPC, 'No space left on device')

  assert not disk.write_or_warn(str(tmp_path / 'eval.json'), full)
  assert os.listdir(tmp_path) == ['metrics.jsonl']
