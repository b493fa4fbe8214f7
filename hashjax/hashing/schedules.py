"""Continuation schedules for β in HashNet's activation tanh(β·z).

Schedules are pure functions of the (possibly traced) training step, so they are evaluated
inside the jitted train step: raising β never recompiles, and a resumed run recomputes β
from the restored step alone.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

BetaSchedule = Callable[[jax.Array], jax.Array]


def beta_schedule(step, *, beta0: float = 1.0, gamma: float = 0.005, power: float = 0.5,
                  step_size: int = 200) -> jax.Array:
  """HashNet's continuation: β = β0·(1 + γ·t_q)^p, t_q = step rounded down to step_size.

  This is the schedule of the authors' code (β recomputed every `step_size` iterations);
  with the defaults β = 1 for steps 0–199 and β ≈ 7.14 at step 10,000.

  Args:
    step: scalar int (Python or traced) training step, counted from 0.
    beta0: β at step 0. gamma, power: growth rate and exponent. step_size: steps between
      updates of β (1 = a smooth schedule).

  Returns:
    float32 scalar β (dimensionless).
  """
  if step_size < 1:
    raise ValueError(f'step_size={step_size} must be a positive number of steps')
  t = jnp.asarray(step, jnp.int32)
  t_q = (t // step_size) * step_size
  return beta0 * (1.0 + gamma * t_q.astype(jnp.float32)) ** power


def constant_beta(step, *, beta0: float = 1.0) -> jax.Array:
  """β = β0 at every step (the 'no continuation' ablation, and DHN)."""
  return jnp.full((), beta0, jnp.float32) + 0.0 * jnp.asarray(step, jnp.float32)


SCHEDULES = ('hashnet', 'constant')


def make_beta_schedule(name: str, **kwargs) -> BetaSchedule:
  """Returns a schedule `step -> β` by name ('hashnet' or 'constant') with its settings bound."""
  if name == 'hashnet':
    return functools.partial(beta_schedule, **kwargs)
  if name == 'constant':
    return functools.partial(constant_beta, beta0=kwargs.get('beta0', 1.0))
  raise ValueError(f'unknown beta schedule {name!r}; accepted: {", ".join(SCHEDULES)}')
