"""Kernels tuned for XLA:CPU, behind one backend check.

The models call the layers and functions here. With `cpu_kernels()` (the default backend is
CPU) they run the custom VJPs and matmul forms of this package; on every other backend, and
under `force_portable()`, flax's and lax's own ops. Both paths compute the same function with
the same parameters (names, shapes, layouts). `compiler_options()` goes with the train steps'
`jax.jit`. Why each kernel exists is in its docstring; figures: docs/PERFORMANCE.md.

Layers and functions (dispatching): `Conv`, `Dense`, `max_pool`, `strided_conv`,
`strided_conv_transpose`, and the contractions `conv_general_dilated`, `dot_general`.
The CPU kernels themselves: `kernel_gradient`, `matmul`, `slice_max_pool`, `conv_4x4_s2`,
`conv_transpose_4x4_s2`.
"""

from hashjax.ops.backend import compiler_options, cpu_kernels, force_portable
from hashjax.ops.conv import Conv, conv_general_dilated, kernel_gradient
from hashjax.ops.dense import Dense, dot_general, matmul
from hashjax.ops.pool import max_pool, slice_max_pool
from hashjax.ops.strided import (conv_4x4_s2, conv_transpose_4x4_s2, strided_conv,
                                 strided_conv_transpose)

__all__ = ['Conv', 'Dense', 'compiler_options', 'conv_4x4_s2', 'conv_general_dilated',
           'conv_transpose_4x4_s2', 'cpu_kernels', 'dot_general', 'force_portable',
           'kernel_gradient', 'matmul', 'max_pool', 'slice_max_pool', 'strided_conv',
           'strided_conv_transpose']
