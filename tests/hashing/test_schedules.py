import math

import jax
import numpy as np
import pytest

from hashjax import beta_schedule, constant_beta
from hashjax.hashing.schedules import make_beta_schedule


@pytest.mark.parametrize('step,expected', [
    (0, 1.0), (199, 1.0), (200, math.sqrt(2.0)), (399, math.sqrt(2.0)),
    # 10,000 steps of the authors' schedule: sqrt(1 + 0.005 * 10000) = sqrt(51) ≈ 7.14.
    (10_000, math.sqrt(51.0)),
])
def test_hashnet_schedule_values(step, expected):
  assert float(beta_schedule(step)) == pytest.approx(expected, rel=1e-6)


def test_schedule_settings():
  assert float(beta_schedule(5, beta0=2.0, gamma=1.0, power=1.0, step_size=1)) == pytest.approx(12.0)
  assert float(constant_beta(12345, beta0=3.0)) == 3.0
  with pytest.raises(ValueError, match='unknown beta schedule'):
    make_beta_schedule('cosine')


def test_traced_beta_never_recompiles():
  traces = []

  @jax.jit
  def f(step):
    traces.append(1)
    return beta_schedule(step)

  values = [float(f(np.int32(s))) for s in (0, 200, 400, 10_000)]
  assert len(traces) == 1
  assert values == sorted(values) and values[0] < values[-1]
