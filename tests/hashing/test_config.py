"""Tests for hashjax/hashing/config.py: every bad setting is one ConfigError naming it."""

import pytest

from configs import hashnet_digits
from hashjax.hashing.config import hash_config
from hashjax.runtime.errors import ConfigError
from hashjax.runtime.settings import override
from tests.hashing.test_job import _get_test_config


@pytest.mark.parametrize('overrides,match', [
    ({'bits': 7}, 'bits=7 is out of range; accepted: integers 8..1024'),
    ({'bits': 2048}, 'bits=2048'),
    ({'loss.weighting': 'paper'}, "loss.weighting='paper' is not accepted"),
    ({'loss.weighting': 'fixed'}, 'needs loss.class_num'),
    ({'loss.similarity': 'graded'}, "loss.similarity='graded' is not accepted"),
    ({'loss.similarity': 'soft', 'loss.name': 'dhn'}, "loss.similarity='soft' is HashNet's"),
    ({'eval_extra': 'copies', 'updating.from_workdir': '/tmp/x'}, 'is for train.py runs'),
    ({'eval_extra': 'ndcg,bleu'}, "unknown eval_extra metric 'bleu'"),
    ({'optimizer': 'lamb'}, "optimizer='lamb'"),
    ({'batch_size': 1}, 'batch_size=1'),
])
def test_hash_config_errors(overrides, match):
  with pytest.raises(ConfigError, match=match):
    hash_config(_get_test_config(**overrides))


def test_unknown_config_key():
  c = _get_test_config().to_dict()
  c['bitz'] = 3
  with pytest.raises(ConfigError, match='unknown config key bitz'):
    hash_config(c)


def _resnet18_config(**overrides):
  c = hashnet_digits.get_config()
  c.backbone, c.bits = 'resnet18', 16
  c.update(overrides)
  return c


def test_pretrained_config_errors(tmp_path):
  with pytest.raises(ConfigError, match=r"pretrained='/nonexistent.npz' is not a file"):
    hash_config(_resnet18_config(pretrained='/nonexistent.npz'))
  (tmp_path / 'w.npz').write_bytes(b'')
  with pytest.raises(ConfigError, match="got backbone='small_cnn'"):
    hash_config(_resnet18_config(backbone='small_cnn', pretrained=str(tmp_path / 'w.npz')))


def test_override_sets_dotted_keys_and_refuses_unknown_ones():
  from configs import hashnet_digits  # pylint: disable=g-import-not-at-top
  c = override(hashnet_digits.get_config(), {'bits': 48, 'beta.gamma': 0.1,
                                             'split.new_classes': '7,8,9'})
  assert (c.bits, c.beta.gamma, c.split.new_classes) == (48, 0.1, '7,8,9')
  with pytest.raises(ConfigError, match=r"^override beta.gama=0.1 names no field of the config$"):
    override(c, {'beta.gama': 0.1})
  with pytest.raises(ConfigError, match=r'^override bits.low=5 names no field'):
    override(c, {'bits.low': 5})
