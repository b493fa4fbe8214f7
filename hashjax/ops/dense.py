"""`x @ kernel` whose backward pass suits XLA:CPU (nn.Dense's contraction).

Two things in XLA's own gradient cost the AlexNet step on CPU: its input gradient dy @ kernelᵀ
contracts the kernel's minor dimension, which Eigen runs slowly (here: kernel · dyᵀ behind an
optimization barrier, then transposed); and a donated kernel read by that input gradient was
copied whole every step (here: a zero-valued dependency orders the kernel's update after the
read). Values are XLA's up to float rounding. Figures: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from hashjax.ops.backend import cpu_kernels


def _matmul(x_BxI, kernel_IxO):
  return lax.dot_general(x_BxI, kernel_IxO, (((x_BxI.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def matmul(x_BxI: jax.Array, kernel_IxO: jax.Array) -> jax.Array:
  """x [..., I] @ kernel [I, O] → [..., O], with the CPU-friendly backward pass above."""
  return _matmul(x_BxI, kernel_IxO)


def _matmul_fwd(x_BxI, kernel_IxO):
  return _matmul(x_BxI, kernel_IxO), (x_BxI, kernel_IxO)


def _matmul_bwd(residuals, dy_BxO):
  x_BxI, kernel_IxO = residuals
  batch = tuple(range(x_BxI.ndim - 1))
  dx_IxB = lax.optimization_barrier(
      lax.dot_general(kernel_IxO, dy_BxO, (((1,), (dy_BxO.ndim - 1,)), ((), ()))))
  dx_BxI = jnp.moveaxis(dx_IxB, 0, -1)
  # A zero that XLA cannot fold away (0 · NaN is NaN): the kernel gradient, hence the update
  # of the kernel, now depends on every read of the kernel, and the kernel is not copied.
  dy_BxO = dy_BxO + jnp.zeros((), dy_BxO.dtype) * jnp.sum(dx_BxI)
  dkernel_IxO = lax.dot_general(x_BxI, dy_BxO, ((batch, batch), ((), ())))
  return dx_BxI, dkernel_IxO


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` (same arguments and result); with `cpu_kernels()`, nn.Dense's
  contraction (lhs [..., I] with a 2-D rhs [I, O], no batch dimensions, default precision)
  goes through `matmul`."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  plain = (rhs.ndim == 2 and lhs.dtype == rhs.dtype
           and tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
           and not lhs_batch and not rhs_batch
           and precision is None and preferred_element_type is None)
  if not (plain and cpu_kernels()):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  return matmul(lhs, rhs)


# nn.Dense, with `matmul`'s backward pass on CPU: the same parameters either way.
Dense = functools.partial(nn.Dense, dot_general=dot_general)
