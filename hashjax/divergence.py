"""Jensen–Shannon divergence estimates from discriminators.

For any discriminator D = σ(logit), V(D) = E_data log D(x) + E_gen log(1 − D(x)) satisfies
V ≤ −log 4 + 2·JSD(p_data ‖ p_gen) with equality for the optimal D* = p_data/(p_data + p_gen)
(Goodfellow et al. 2014), so (log 4 + V)/2 is a lower bound on the JSD, in nats (divide by
log 2 for bits; the JSD is at most log 2 nats = 1 bit).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

LOG2 = float(jnp.log(2.0))


class JSDBound(NamedTuple):
  nats: jax.Array
  bits: jax.Array


def jsd_lower_bound(logits_real_N: jax.Array, logits_fake_M: jax.Array) -> JSDBound:
  """(log 4 + mean log σ(real) + mean log(1 − σ(fake))) / 2, in nats and bits.

  Args:
    logits_real_N: D's logits on data samples [N]. logits_fake_M: on generated samples [M].

  Returns:
    `JSDBound(nats, bits)`, scalars; ≤ JSD(p_data ‖ p_gen) ≤ log 2 nats for any D, equal to
    the JSD for the optimal one (in expectation). It can be negative for a poor D.
  """
  value = (jnp.mean(jax.nn.log_sigmoid(logits_real_N))
           + jnp.mean(jax.nn.log_sigmoid(-logits_fake_M)))
  nats = (2 * LOG2 + value) / 2
  return JSDBound(nats=nats, bits=nats / LOG2)
