"""Temporary: moved to `hashjax.ops` (`ops.compiler_options`); delete with its last import."""
from hashjax import ops
cpu_compiler_options = ops.compiler_options
