"""The old model as a prior for the new one: the diagonal Fisher of HashNet's pairwise
likelihood, the Gaussian (Laplace / L2-SP) penalty, and how many codes an update flips.

The Laplace approximation of the old posterior around θ₀ is a Gaussian with precision
λ·F (F the diagonal Fisher), so its negative log is the penalty λ/2·Σ Fᵢ(θᵢ − θ₀ᵢ)²
(Kirkpatrick et al. 2017's EWC); with F = 1 it is the isotropic L2-SP prior λ/2·‖θ − θ₀‖².

The per-example log-likelihood whose squared gradient the Fisher averages: for an image x
of a batch with codes h_j (all under the old model, inference mode, h = tanh(β·z)),
  ℓ(x) = −( mean over the similar j ≠ x of nll_xj + mean over the dissimilar j of nll_xj ),
nll the pairwise negative log-likelihood of `losses.pairwise_nll` (nats), HashNet's balanced
weighting per row, with the other items' codes held fixed: the gradient is that of x's own
code only. F = mean over examples of (∂ℓ/∂θ)², one entry per parameter.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from hashjax.hashing import losses


def example_log_likelihood(h_K: jax.Array, h_BxK: jax.Array, s_B: jax.Array,
                           self_B: jax.Array, alpha: float) -> jax.Array:
  """ℓ of one example (module docstring), nats.

  Args:
    h_K: the example's code [K]. h_BxK: the batch's codes [B] (held fixed by the caller).
    s_B: 0/1 similarity of the example to each batch item [B]. self_B: 1 where the batch
      item is the example itself (excluded), else 0 [B]. alpha: the likelihood's scale.
  """
  theta_B = alpha * (h_BxK @ h_K)
  nll_B = jax.nn.softplus(theta_B) - s_B * theta_B
  similar, dissimilar = s_B * (1 - self_B), (1 - s_B) * (1 - self_B)
  return -(jnp.sum(similar * nll_B) / jnp.maximum(similar.sum(), 1.0)
           + jnp.sum(dissimilar * nll_B) / jnp.maximum(dissimilar.sum(), 1.0))


def per_example_squared_grads(apply_fn: Callable, variables: dict[str, Any],
                              images_BxHxWxC: jax.Array, labels_BxL: jax.Array, *,
                              beta: float, alpha: float) -> Any:
  """Σ over the batch of (∂ℓ/∂params)², a pytree shaped like variables['params'].

  `apply_fn(variables, images, train=False)` gives z [b, K]; each example's gradient is its
  own (vmapped), with the batch's codes held fixed.
  """
  params = variables['params']
  h_BxK = jax.lax.stop_gradient(
      jnp.tanh(beta * apply_fn(variables, images_BxHxWxC, train=False)))
  s_BxB = losses.similarity_matrix(labels_BxL)
  eye_BxB = jnp.eye(h_BxK.shape[0], dtype=jnp.float32)

  def one(image, s_B, self_B):
    def ll(p):
      z_1xK = apply_fn({**variables, 'params': p}, image[None], train=False)
      return example_log_likelihood(jnp.tanh(beta * z_1xK[0]), h_BxK, s_B, self_B, alpha)
    return jax.grad(ll)(params)

  grads = jax.vmap(one)(images_BxHxWxC, s_BxB, eye_BxB)
  return jax.tree.map(lambda g: jnp.sum(jnp.square(g.astype(jnp.float32)), axis=0), grads)


def fisher_diagonal(apply_fn: Callable, variables: dict[str, Any],
                    batches: Iterable[dict[str, np.ndarray]], *, beta: float,
                    alpha: float) -> Any:
  """The diagonal Fisher F of the old model's pairwise likelihood (module docstring).

  Args:
    apply_fn, variables: the old model (flax `apply` and its variables; BatchNorm in
      inference mode).
    batches: {'image': float32 [B, H, W, C], 'label': [B] or [B, L]}, e.g. the old training
      set in batches; pairs are formed within each batch.
    beta: the continuation's β at the end of the old run. alpha: the likelihood's scale.

  Returns:
    A pytree like variables['params'] of float32 ≥ 0: the mean over examples of (∂ℓ/∂θ)²,
    in nats² per unit of each parameter squared.
  """
  step = jax.jit(lambda v, x, y: per_example_squared_grads(apply_fn, v, x, y, beta=beta,
                                                           alpha=alpha))
  total, count = None, 0
  for batch in batches:
    sq = step(variables, jnp.asarray(batch['image']), jnp.asarray(batch['label']))
    total = sq if total is None else jax.tree.map(jnp.add, total, sq)
    count += len(batch['image'])
  if total is None:
    raise ValueError('fisher_diagonal needs at least one batch')
  return jax.tree.map(lambda t: t / count, total)


def laplace_penalty(params: Any, center: Any, fisher: Any | None = None) -> jax.Array:
  """½·Σ Fᵢ(θᵢ − θ₀ᵢ)² over every parameter (½·‖θ − θ₀‖² when `fisher` is None); scalar.

  Multiply by the prior weight λ. params, center (θ₀) and fisher are pytrees of one
  structure; units: those of F times the squared parameter.
  """
  if fisher is None:
    terms = jax.tree.map(lambda p, c: jnp.sum(jnp.square(p - c)), params, center)
  else:
    terms = jax.tree.map(lambda p, c, f: jnp.sum(f * jnp.square(p - c)), params, center, fisher)
  return 0.5 * sum(jax.tree.leaves(terms))


def code_flip_rate(old_codes_NxK: np.ndarray, new_codes_NxK: np.ndarray) -> dict[str, float]:
  """How many bits an update changed, for N items with codes before and after (±1 or 0/1).

  Returns:
    {'flip_rate': mean Hamming distance / K (0..1), 'items_flipped': the fraction of items
    with at least one bit changed (0..1)}.
  """
  old, new = np.asarray(old_codes_NxK) > 0, np.asarray(new_codes_NxK) > 0
  if old.shape != new.shape or old.ndim != 2:
    raise ValueError(f'codes must both be [N, K]; got {old.shape} and {new.shape}')
  if old.shape[0] == 0:
    return {'flip_rate': 0.0, 'items_flipped': 0.0}
  differ = old != new
  return {'flip_rate': float(differ.mean()), 'items_flipped': float(differ.any(axis=1).mean())}


def save_fisher(path: str, fisher: Any, *, step: int, beta: float, write) -> bool:
  """Writes F (flattened by parameter path) with the step and β it was computed at, through
  `write(path, writer)` (`disk.write_or_warn`); returns whether it was written."""
  leaves = jax.tree_util.tree_flatten_with_path(fisher)[0]
  arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}

  def writer(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, __step__=np.int64(step), __beta__=np.float64(beta), **arrays)
  return write(path, writer)


def load_fisher(path: str, like: Any) -> tuple[Any, int]:
  """(F shaped like the pytree `like`, the step it was computed at) from `save_fisher`'s file.
  ValueError (one line): a missing parameter or step, or an entry that is not finite and ≥ 0;
  `UNREADABLE_NPZ_ERRORS` for a file that is not a readable npz."""
  with np.load(path) as f:
    stored = {k: f[k] for k in f.files}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  out = []
  for key, leaf in leaves:
    name = jax.tree_util.keystr(key)
    if name not in stored or stored[name].shape != np.shape(leaf):
      raise ValueError(f'{path} has no Fisher entry {name} of shape {np.shape(leaf)}')
    if not (np.all(np.isfinite(stored[name])) and np.all(stored[name] >= 0)):
      raise ValueError(f'{path}: Fisher entry {name} is not finite and ≥ 0 everywhere')
    out.append(stored[name])
  if '__step__' not in stored or stored['__step__'].shape != ():
    raise ValueError(f'{path} names no step')
  return jax.tree_util.tree_unflatten(treedef, out), int(stored['__step__'])
