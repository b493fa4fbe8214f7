"""hashjax: deep learning to hash (HashNet) and GANs in JAX/Flax.

The functional API: models are flax linen modules (pure `init`/`apply`), everything else
pure functions on arrays.
"""

from hashjax.codes import hamming_distance, pack_codes, sign_codes, unpack_codes
from hashjax.losses import dhn_loss, hashnet_loss
from hashjax.metrics import (average_precision, mean_average_precision, precision_at_radius,
                             recall_at_radius)
from hashjax.models import HashNet, hash_activation
from hashjax.schedules import beta_schedule, constant_beta

__version__ = '0.1.0'

__all__ = [
    'HashNet', 'average_precision', 'beta_schedule', 'constant_beta', 'dhn_loss',
    'hamming_distance', 'hash_activation', 'hashnet_loss', 'mean_average_precision',
    'pack_codes', 'precision_at_radius', 'recall_at_radius', 'sign_codes', 'unpack_codes',
]
