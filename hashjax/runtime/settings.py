"""Settings every job shares, and the checks that turn a ConfigDict into a typed one.

Jobs receive frozen dataclasses, never a ConfigDict (`hashing.config`, `gan.config`). Every
check raises `ConfigError` with one line naming the bad value and what is accepted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hashjax.runtime.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How many checkpoints to keep, a byte budget for them (quotas statvfs cannot see), the
  evaluation key whose best checkpoint is never pruned, and background writes."""
  max_to_keep: int = 2
  max_bytes: int | None = None
  best_metric: str | None = None
  async_save: bool = True


def override(config, overrides: dict[str, Any]):
  """Sets dotted keys of a ConfigDict (e.g. {'beta.gamma': 0.1}) and returns it; a key it
  lacks is a `ConfigError`."""
  for key, value in overrides.items():
    *groups, name = key.split('.')
    node = config
    for group in groups:
      node = node.get(group) if hasattr(node, 'get') and hasattr(node, 'to_dict') else None
    if node is None or not hasattr(node, 'to_dict') or name not in node:
      raise ConfigError(f'override {key}={value!r} names no field of the config')
    node[name] = value
  return config


def build(cls, values: dict[str, Any], prefix: str = ''):
  """`cls(**values)` for a dataclass; an unknown key is a `ConfigError` listing the keys
  accepted (with `prefix`, the group's name and a dot)."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ConfigError(f'unknown config key {prefix}{unknown[0]}; accepted: '
                      f'{", ".join(prefix + n for n in sorted(names))}')
  return cls(**values)


def require(ok: bool, message: str) -> None:
  """A `ConfigError(message)` unless `ok`."""
  if not ok:
    raise ConfigError(message)


def one_of(name: str, value, accepted) -> None:
  """A `ConfigError` unless `value` is one of `accepted`."""
  require(value in accepted, f'{name}={value!r} is not accepted; use one of: '
                             f'{", ".join(map(str, accepted))}')


def positive_int(name: str, value, minimum: int = 1) -> None:
  """A `ConfigError` unless `value` is an integer (not a bool) ≥ `minimum`."""
  require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
          f'{name}={value!r} must be an integer ≥ {minimum}')
