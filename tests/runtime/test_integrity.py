import os

import jax
import jax.numpy as jnp
import pytest

from hashjax.runtime import integrity
from hashjax.runtime.checkpoint import Checkpointer


@pytest.fixture
def saved(tmp_path):
  ckpt = Checkpointer(str(tmp_path / 'checkpoints'), async_save=False)
  ckpt.save(1, {'w': jnp.arange(4096, dtype=jnp.float32)}, final=True)
  ckpt.close()
  return str(tmp_path / 'checkpoints' / '1')


def test_a_save_records_every_file_and_a_flipped_byte_is_found(saved):
  recorded = integrity.digests(saved)
  assert os.path.exists(os.path.join(saved, integrity.FILE)) and len(recorded) > 3
  integrity.verify(saved)  # as saved: silent
  path = max((os.path.join(d, f) for d, _, fs in os.walk(saved) for f in fs),
             key=os.path.getsize)
  with open(path, 'r+b') as f:
    f.seek(100)
    byte = f.read(1)[0]
    f.seek(100)
    f.write(bytes([byte ^ 1]))
  relative = os.path.relpath(path, saved)
  with pytest.raises(ValueError, match=f'{relative} is not what was saved'):
    integrity.verify(saved)
  os.remove(path)
  with pytest.raises(ValueError, match=f'{relative} is missing'):
    integrity.verify(saved)
  os.remove(os.path.join(saved, integrity.FILE))
  integrity.verify(saved)  # no record (an earlier version's checkpoint): unchecked


def test_a_restore_into_other_shapes_names_the_array_before_reading_it(saved):
  ckpt = Checkpointer(os.path.dirname(saved))
  with pytest.raises(ValueError, match=r'^checkpoint 1 stores w with shape \(4096,\); the '
                                       r'model wants \(8,\)$'):
    ckpt.restore(1, {'w': jax.ShapeDtypeStruct((8,), jnp.float32)})
  ckpt.close()
