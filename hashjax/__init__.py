"""hashjax: deep learning to hash (HashNet) and GANs in JAX/Flax.

The functional API: models are flax linen modules (pure `init`/`apply`), everything else
pure functions on arrays. Arrays are named with their shape (`codes_NxK`, `dist_QxN`); what
each letter means, and the one name each concept has (the cutoff of a ranking is `topk`), is
docs/names.md.
"""

from hashjax.gan.divergence import JSDEstimate, estimate_jsd, exact_jsd, jsd_lower_bound
from hashjax.hashing.losses import dhn_loss, hashnet_loss
from hashjax.hashing.priors import code_flip_rate, fisher_diagonal, laplace_penalty
from hashjax.hashing.schedules import beta_schedule, constant_beta
from hashjax.models import HashNet, hash_activation
from hashjax.retrieval.codes import hamming_distance, pack_codes, sign_codes, unpack_codes
from hashjax.retrieval.copy_detection import copy_detection
from hashjax.retrieval.graded import graded_metrics, mean_acg, mean_ndcg
from hashjax.retrieval.metrics import (
                                       average_precision,
                                       average_precision_of_sets,
                                       map_tie_summary,
                                       mean_average_precision,
                                       precision_at_radius,
                                       precision_at_topk,
                                       precision_recall_curve,
                                       recall_at_radius,
                                       retrieval_report,
)
from hashjax.retrieval.neighbours import neighbour_sets
from hashjax.retrieval.search import HammingIndex, hamming_topk

__version__ = '0.1.0'

__all__ = [
    'HammingIndex', 'HashNet', 'JSDEstimate', 'average_precision',
    'average_precision_of_sets', 'beta_schedule',
    'code_flip_rate', 'constant_beta', 'copy_detection', 'dhn_loss', 'estimate_jsd', 'exact_jsd',
    'fisher_diagonal', 'graded_metrics', 'hamming_distance', 'hamming_topk', 'hash_activation',
    'hashnet_loss', 'jsd_lower_bound', 'laplace_penalty', 'map_tie_summary', 'mean_acg',
    'mean_average_precision', 'mean_ndcg', 'neighbour_sets',
    'pack_codes', 'precision_at_radius', 'precision_at_topk', 'precision_recall_curve',
    'recall_at_radius', 'retrieval_report', 'sign_codes', 'unpack_codes',
]
