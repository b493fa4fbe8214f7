"""Sampling from a trained GAN (`gan.py --mode=sample`): the run's settings from its
config.json, the newest checkpoint, and a grid of EMA-generator samples, optionally for
chosen attribute values (`--attributes=hair=blue,eye=red`).
"""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections
import numpy as np

from hashjax.gan import evaluation as gan_eval
from hashjax.gan.config import GanConfig, gan_config
from hashjax.gan.job import GanJob
from hashjax.gan.step import DataSpec
from hashjax.runtime import loop
from hashjax.runtime.errors import ConfigError

log = logging.getLogger(__name__)


def parse_attributes(text: str, spec: DataSpec) -> dict[int, int]:
  """'hair=blue,eye=red' → {attribute index: value id} of the run's attributes. Unknown
  names or values are one-line ConfigErrors."""
  chosen = {}
  for part in filter(None, (p.strip() for p in text.split(','))):
    name, eq, value = (s.strip() for s in part.partition('='))
    if not eq or name not in spec.attribute_names:
      raise ConfigError(f'attributes: {part!r} is not NAME=VALUE with NAME one of: '
                        f'{", ".join(spec.attribute_names)}')
    a = spec.attribute_names.index(name)
    if value not in spec.attribute_values[a]:
      raise ConfigError(f'attributes: {name}={value!r} is unknown; accepted: '
                        f'{", ".join(spec.attribute_values[a])}')
    chosen[a] = spec.attribute_values[a].index(value)
  return chosen


def run_config(config: ml_collections.ConfigDict | GanConfig, workdir: str
               ) -> tuple[GanConfig, str | None]:
  """(settings, their config.json) of the run in `workdir`: its config.json (what its
  checkpoints were trained with) when it exists, else (`config`, None). A config.json that
  cannot be read is a ConfigError."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      recorded = json.load(f)
  except FileNotFoundError:
    return (config if isinstance(config, GanConfig) else gan_config(config)), None
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} cannot be read ({e}); restore it, or remove it to sample with '
                      'the config given') from None
  try:
    return gan_config(recorded), path
  except (ConfigError, TypeError) as e:  # TypeError: a key of GanConfig is missing
    raise ConfigError(f'{path} is no GAN run\'s config: {e}') from None


MAX_SAMPLES = 4096  # a 64 × 64 grid: the largest sample image gan.py writes


def sample(config: ml_collections.ConfigDict | GanConfig, workdir: str, num_samples: int,
           out: str | None = None, attributes: str | None = None) -> str:
  """Writes a grid of `num_samples` EMA-generator samples from the newest checkpoint;
  returns its path.

  attributes: 'NAME=VALUE,...' for a run conditioned on a label table's attributes; the
  attributes not named follow the training data (`gan_eval.attribute_rows`).

  The settings (model, data, seed of the noise) are the run's, from `<workdir>/config.json`
  when it exists; `config` is used only for a run without one (then its model settings must
  be those the run was trained with: a ConfigError says so otherwise).
  """
  if not 1 <= num_samples <= MAX_SAMPLES:
    raise ConfigError(f'num_samples={num_samples} is out of range; accepted: 1..{MAX_SAMPLES} '
                      '(one grid image)')
  if out is not None and (out.endswith(os.sep) or os.path.isdir(out)):
    raise ConfigError(f'out={out!r} is a folder; give the path of a PNG file')
  if not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir!r} does not exist; train first with the same --workdir')
  cfg, recorded = run_config(config, workdir)
  if recorded:
    log.info('sampling with the settings of %s', recorded)
  job = GanJob(cfg, workdir)
  labels = _conditions(job, attributes, num_samples, workdir)  # bad attributes: before loading
  state = _newest_state(job, workdir, recorded)
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(cfg.seed + 104729), (num_samples, cfg.nz)))
  path = out or os.path.join(workdir, 'samples', f'sample_{int(state.step):06d}.png')
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  except OSError as e:
    raise ConfigError(f'out={path!r}: its folder cannot be made ({e.strerror})') from None
  if not gan_eval.write_sample_image(path, state, cfg, job.spec.num_classes, z, labels):
    raise ConfigError(f'could not write {path}: the disk is full (or, for a 2-D scatter '
                      'plot, matplotlib is missing)')
  return path


def _conditions(job: GanJob, attributes: str | None, num_samples: int, workdir: str):
  """What the samples are generated for: attribute ids int32 [n, A] (the chosen values, the
  others following the data), class ids int32 [n] (one class per column), or None."""
  cfg = job.cfg
  if attributes is not None:
    if not (cfg.conditional and job.spec.attribute_sizes):
      raise ConfigError(f'attributes={attributes!r}: the run in {workdir} is not conditioned '
                        'on attributes (it needs a label table and conditional=True)')
    chosen = parse_attributes(attributes, job.spec)
    return gan_eval.attribute_rows(job.labels, chosen, num_samples, cfg.seed)
  if cfg.conditional and job.spec.attribute_sizes:
    return gan_eval.attribute_rows(job.labels, {}, num_samples, cfg.seed)
  if cfg.conditional:
    return (np.arange(num_samples) % job.spec.num_classes).astype(np.int32)
  return None


def _newest_state(job: GanJob, workdir: str, recorded: str | None):
  """The newest checkpoint's state; one that does not fit the model is a ConfigError."""
  cfg = job.cfg
  try:
    return loop.load_checkpoint(job, workdir)[0]
  except ConfigError:
    raise
  except loop.DAMAGED_CHECKPOINT_ERRORS as e:  # orbax: e.g. a stored shape unlike the model's
    settings = ', '.join(f'{k}={getattr(cfg, k)!r}' for k in (
        'nz', 'ngf', 'ndf', 'image_size', 'conditional', 'model'))
    hint = ('it may be damaged (training again in this workdir sets a damaged checkpoint aside)'
            if recorded else 'sample with the config the run was trained with')
    raise ConfigError(f'the newest checkpoint in {workdir} does not fit the model settings of '
                      f'{recorded or "the config given"} ({settings}): '
                      f'{str(e).split(". ")[0][:200]}; {hint}') from None
