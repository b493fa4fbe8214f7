"""A drop-in `dot_general` for `nn.Dense` whose backward pass suits XLA:CPU.

Two things in XLA's own gradient of `x @ kernel` cost the HashNet AlexNet step on CPU:

* The input gradient dy @ kernelᵀ contracts the kernel's minor dimension. XLA folds any
  transpose written around it back into that form, which Eigen (the train steps' dot kernels,
  conv.cpu_compiler_options) ran 4× slower than the forward pass (9216→4096 at batch 32:
  93 ms against 21–25). Computed as kernel · dyᵀ [I, B] behind an optimization barrier, then
  transposed (a small activation), it took 22 ms on Eigen (15 ms on YNNPACK).
* A donated kernel read by the input gradient was copied whole at the start of every step
  (151 MB for AlexNet's first dense layer): nothing orders that read before the in-place
  update of the kernel, so XLA's copy insertion keeps the old value alive in a copy. The kernel
  gradient here takes a zero-valued data dependency on the input gradient (0 · Σ dx added to
  the small dy), which orders the update after every read; an optimization barrier does not.

Together, with dots still on YNNPACK: the AlexNet step 32.8 → 36.6 ex/s, 24 alternating
single steps in one process (docs/PERFORMANCE.md). Values are XLA's up to float rounding; off
CPU, and for anything but a plain `x[..., I] @ kernel[I, O]` with default precision, it is
exactly `lax.dot_general`.

Use: `nn.Dense(..., dot_general=dense.dot_general)`, or `dense.Dense(...)`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _matmul(x_NxI, kernel_IxO):
  return lax.dot_general(x_NxI, kernel_IxO, (((x_NxI.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def matmul(x_NxI: jax.Array, kernel_IxO: jax.Array) -> jax.Array:
  """x [..., I] @ kernel [I, O] → [..., O], with the CPU-friendly backward pass above."""
  return _matmul(x_NxI, kernel_IxO)


def _matmul_fwd(x_NxI, kernel_IxO):
  return _matmul(x_NxI, kernel_IxO), (x_NxI, kernel_IxO)


def _matmul_bwd(residuals, dy_NxO):
  x_NxI, kernel_IxO = residuals
  batch = tuple(range(x_NxI.ndim - 1))
  dx_IxN = lax.optimization_barrier(
      lax.dot_general(kernel_IxO, dy_NxO, (((1,), (dy_NxO.ndim - 1,)), ((), ()))))
  dx_NxI = jnp.moveaxis(dx_IxN, 0, -1)
  # A zero that XLA cannot fold away (0 · NaN is NaN): the kernel gradient, hence the update
  # of the kernel, now depends on every read of the kernel, and the kernel is not copied.
  dy_NxO = dy_NxO + jnp.zeros((), dy_NxO.dtype) * jnp.sum(dx_NxI)
  dkernel_IxO = lax.dot_general(x_NxI, dy_NxO, ((batch, batch), ((), ())))
  return dx_NxI, dkernel_IxO


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general`, through `matmul` for nn.Dense's contraction (lhs [..., I] with a
  2-D rhs [I, O], no batch dimensions, default precision) on CPU. Same arguments and result."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  plain = (jax.default_backend() == 'cpu' and rhs.ndim == 2 and lhs.dtype == rhs.dtype
           and tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
           and not lhs_batch and not rhs_batch
           and precision is None and preferred_element_type is None)
  if not plain:
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  return matmul(lhs, rhs)


Dense = functools.partial(nn.Dense, dot_general=dot_general)
