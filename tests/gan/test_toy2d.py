"""Tests for hashjax/gan/toy2d.py: the 2-D mixtures, mode statistics and the KDE JSD."""

import numpy as np
import pytest

from hashjax.gan import toy2d


def test_mixtures_follow_veegan_pacgan():
  ring = toy2d.ring8()
  np.testing.assert_allclose(np.linalg.norm(ring.means_Gx2, axis=1), 2.0)
  assert len(ring.means_Gx2) == 8 and ring.std == 0.02
  grid = toy2d.grid25()
  assert sorted(set(grid.means_Gx2[:, 0])) == [-4, -2, 0, 2, 4] and grid.std == 0.05
  assert len({tuple(m) for m in grid.means_Gx2}) == 25
  x = toy2d.sample(grid, 20_000, seed=0)
  assert x.dtype == np.float32 and toy2d.mode_stats(x, grid).modes == 25


def test_mode_stats_on_hand_made_samples():
  ring = toy2d.ring8()
  m = ring.means_Gx2
  samples = np.concatenate([
      m[[0, 0, 3]],  # on two modes
      m[[5]] + [[2.9 * 0.02, 0]],  # inside 3 std of mode 5
      m[[6]] + [[3.1 * 0.02, 0]],  # just outside 3 std: not high quality, mode 6 not captured
      [[0.0, 0.0]]])  # between modes
  stats = toy2d.mode_stats(samples, ring)
  assert stats.modes == 3 and stats.high_quality == pytest.approx(4 / 6)
  assert stats.counts_G.tolist() == [2, 0, 0, 1, 0, 1, 0, 0]


def test_kde_jsd_of_real_samples_is_small_and_of_one_mode_is_known():
  ring = toy2d.ring8()
  real = toy2d.sample(ring, 2500, seed=1)
  h = ring.std / 2
  floor = toy2d.kde_jsd(ring, real, toy2d.sample(ring, 10_000, 2), toy2d.sample(ring, 2500, 3), h)
  assert abs(floor) < 0.02  # Monte-Carlo noise can make it slightly negative
  # A generator on mode 0 only: p = 1/8 per mode, q = 1 on mode 0, m = 9/16 there, 1/16 on the
  # other seven. JSD = ½[⅛ log(2/9) + ⅞ log 2] + ½ log(16/9) = 0.4966 nats.
  one = lambda n, s: ring.means_Gx2[0] + ring.std * np.random.default_rng(s).standard_normal((n, 2))
  collapsed = toy2d.kde_jsd(ring, real, one(10_000, 4), one(2500, 5), h)
  assert collapsed == pytest.approx(0.4966, abs=0.02)
