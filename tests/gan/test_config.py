"""GanConfig: one-line errors for settings it cannot use."""

import pytest

from configs import gan_ring
from hashjax.gan.config import gan_config
from hashjax.runtime.errors import ConfigError
from tests.gan.test_job import _get_test_config as _gan_test_config
from tests.gan.test_job import _toy_config


def test_gan_config_errors():
  with pytest.raises(ConfigError, match='image_size=48 is not accepted; use one of: 32, 64'):
    gan_config(_gan_test_config(image_size=48))
  with pytest.raises(ConfigError, match="gan_loss='hinge'"):
    gan_config(_gan_test_config(gan_loss='hinge'))
  with pytest.raises(ConfigError, match='ema_decay=1.0'):
    gan_config(_gan_test_config(ema_decay=1.0))
  with pytest.raises(ConfigError, match="model='mlp' does not fit dataset='digits'"):
    gan_config(_gan_test_config(model='mlp'))
  with pytest.raises(ConfigError, match='eval_holdout=5 must be 0'):
    gan_config(_gan_test_config(eval_holdout=5))


def test_toy_config_errors():
  with pytest.raises(ConfigError, match="model='dcgan' does not fit dataset='ring8'"):
    gan_config(_toy_config(gan_ring, model='dcgan'))
  with pytest.raises(ConfigError, match="model='gpt' is not accepted"):
    gan_config(_toy_config(gan_ring, model='gpt'))
