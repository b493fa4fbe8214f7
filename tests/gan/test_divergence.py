import functools

import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

from hashjax.data import base as data_lib
from hashjax.data import sources
from hashjax.gan.divergence import LOG2, estimate_jsd, exact_jsd, jsd_lower_bound

N = 4000  # samples per distribution; one shape for all 2-D cases, so one compilation
FAST = dict(hidden=64, steps=1000, seed=1)  # the estimator, shrunk to keep the tests quick


def gaussian(mean, std=1.0):
  """(log density [N, 2] → [N], sampler) of an isotropic 2-D Gaussian."""
  mean = np.asarray(mean, np.float32)
  log_p = lambda x: jnp.sum(norm.logpdf(x, mean, std), axis=-1)
  draw = lambda rng, n: (mean + std * rng.standard_normal((n, 2))).astype(np.float32)
  return log_p, draw


def mixture(means, std):
  means = np.asarray(means, np.float32)
  log_p = lambda x: logsumexp(jnp.sum(norm.logpdf(x[:, None], means, std), -1), 1) - np.log(
      len(means))
  draw = lambda rng, n: (means[rng.integers(0, len(means), n)]
                         + std * rng.standard_normal((n, 2))).astype(np.float32)
  return log_p, draw


def uniform_square(lo, hi):
  """Uniform on [lo, hi]²; log density −inf outside (exact_jsd only sees it at its own
  samples and at the other's, where logaddexp keeps m finite)."""
  def log_p(x):
    inside = jnp.all((x >= lo) & (x <= hi), axis=-1)
    return jnp.where(inside, -2 * jnp.log(hi - lo), -jnp.inf)
  draw = lambda rng, n: rng.uniform(lo, hi, (n, 2)).astype(np.float32)
  return log_p, draw


CASES = {
    'identical': (gaussian([0, 0]), gaussian([0, 0])),
    'shift_0.5': (gaussian([0, 0]), gaussian([0.5, 0])),
    'shift_1': (gaussian([0, 0]), gaussian([1, 0])),
    'shift_2': (gaussian([0, 0]), gaussian([2, 0])),
    'shift_3': (gaussian([0, 0]), gaussian([3, 0])),
    'mixture_vs_gaussian': (mixture([[-1.5, 0], [1.5, 0]], 0.5), gaussian([0, 0])),
    'disjoint': (uniform_square(0.0, 1.0), uniform_square(1.5, 2.5)),
}


@functools.lru_cache(maxsize=None)
def case_values(name):
  (log_p, draw_p), (log_q, draw_q) = CASES[name]
  truth = float(exact_jsd(log_p, log_q, draw_p(np.random.default_rng(10), 200_000),
                          draw_q(np.random.default_rng(11), 200_000)))
  real, fake = draw_p(np.random.default_rng(0), N), draw_q(np.random.default_rng(1), N)
  return truth, estimate_jsd(real, fake, **FAST)


@pytest.mark.parametrize('name', sorted(CASES))
def test_estimate_matches_exact_jsd(name):
  truth, est = case_values(name)
  assert 0 <= truth <= LOG2 + 1e-6
  assert est.ci_low <= est.jsd <= est.ci_high
  assert abs(est.jsd - truth) <= 0.03 or est.ci_low <= truth <= est.ci_high, (truth, est)


def test_identical_is_zero_and_disjoint_is_log2():
  truth, est = case_values('identical')
  assert truth == pytest.approx(0.0, abs=1e-6) and est.jsd <= 0.01
  assert est.accuracy == pytest.approx(0.5, abs=0.05)
  truth, est = case_values('disjoint')
  assert truth == pytest.approx(LOG2, abs=1e-6) and est.jsd >= 0.65 and est.accuracy > 0.99


@pytest.mark.parametrize('shift', [0.0, 1.0, 3.0, 20.0])
def test_bound_of_the_optimal_discriminator_is_the_exact_jsd(shift):
  # D*(x) = p/(p + q), i.e. logit = log p − log q: on the same samples the bound and the
  # Monte-Carlo JSD are the same sum, term by term.
  (log_p, draw_p), (log_q, draw_q) = gaussian([0, 0]), gaussian([shift, 0])
  xp, xq = draw_p(np.random.default_rng(0), 5000), draw_q(np.random.default_rng(1), 5000)
  bound = jsd_lower_bound(log_p(xp) - log_q(xp), log_p(xq) - log_q(xq))
  truth = exact_jsd(log_p, log_q, xp, xq)
  assert float(bound.nats) <= LOG2 + 1e-6
  np.testing.assert_allclose(bound.nats, truth, atol=1e-5)
  np.testing.assert_allclose(bound.bits, bound.nats / LOG2, rtol=1e-6)


def test_real_vs_real_digits_is_zero_and_real_vs_noise_is_log2():
  source = sources.load_source('digits')
  images = data_lib.to_float(data_lib.fit_to_size(
      np.asarray(source.images(np.arange(len(source)))), 32))
  perm = np.random.default_rng(0).permutation(len(images))
  a, b = images[perm[:len(images) // 2]], images[perm[len(images) // 2:]]
  same = estimate_jsd(a, b, classifier='mlp', hidden=64, steps=300)
  assert abs(same.jsd) <= 0.03 and same.ci_low <= 0.0 + 0.02, same
  noise = np.random.default_rng(1).uniform(-1, 1, a.shape).astype(np.float32)
  # The estimator of the GAN loop: a fresh DCGAN discriminator (gan_trainer's ndf and batch).
  far = estimate_jsd(a, noise, classifier='dcgan_d', ndf=8, batch_size=64, steps=100)
  assert far.jsd >= 0.65 and far.accuracy > 0.99, far


def test_bad_inputs_raise():
  x = np.zeros((32, 2), np.float32)
  with pytest.raises(ValueError, match="classifier='svm' is not accepted"):
    estimate_jsd(x, x, classifier='svm')
  with pytest.raises(ValueError, match='at least 8 samples'):
    estimate_jsd(x[:4], x)
  with pytest.raises(ValueError, match="'dcgan_d' needs NHWC images"):
    estimate_jsd(x, x, classifier='dcgan_d')


def test_a_confidently_wrong_held_out_example_costs_little():
  # Validation separated perfectly, so the search picks a sharp classifier and the smallest
  # uniform-mixing weight; then one of 200 held-out real examples is confidently wrong.
  from hashjax.gan import divergence  # pylint: disable=g-import-not-at-top
  _, (_, eps) = divergence._calibrated_bound(  # pylint: disable=protected-access
      np.full(50, 20.0), np.full(50, -20.0))
  assert eps > 0
  test_real, test_fake = np.full(200, 1000.0), np.full(200, -1000.0)
  test_real[0] = -1000.0
  summarise = functools.partial(divergence._summarise, test_real, test_fake,  # pylint: disable=protected-access
                                np.random.default_rng(0), 0.95, 100)
  kept = summarise(eps)
  assert kept.jsd > 0.6 and kept.accuracy == 399 / 400, kept
  raw = summarise(0.0)  # without the mixing the single error dominates the estimate
  assert raw.jsd < 0.0, raw
