"""Scores an attribute-conditioned GAN run's newest checkpoint with the attribute classifier
(`hashjax.gan.attribute_classifier`), trained first on the run's tagged images if needed.

  python -m hashjax.commands.attributes --workdir=RUN [--steps=4000]

writes `<RUN>/attributes.json`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from hashjax.gan import attribute_classifier, job, sampling
from hashjax.runtime import cli, loop, plumbing
from hashjax.runtime.errors import USER_ERRORS, ConfigError

PROG = 'attributes'


def score_run(workdir: str, num_steps: int) -> dict[str, Any]:
  """Trains the classifier on the run's tagged images (or reloads it) and scores the run's
  newest checkpoint; writes and returns `<workdir>/attributes.json`."""
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    raise ConfigError(f'no config.json in {workdir}: not a GAN run (train it with gan.py first)')
  cfg, _ = sampling.run_config({}, workdir)
  if not (cfg.conditional and cfg.labels):
    raise ConfigError(f'the run in {workdir} is not conditioned on a label table\'s '
                      'attributes (labels=FILE.csv, conditional=True)')
  images, labels, spec = job.load_images(cfg, os.path.join(workdir, 'data_cache'))
  classifier, real = attribute_classifier.train(images, labels, spec.attribute_names,
                                                spec.attribute_sizes, workdir, num_steps,
                                                cfg.seed)
  gan = job.GanJob(cfg, workdir)
  state, _ = loop.load_checkpoint(gan, workdir)
  out = {'step': int(state.step), 'classifier_steps': num_steps,
         **{k: v for k, v in real.items() if k != 'step'},
         **attribute_classifier.score_samples(state, cfg, classifier, gan.labels,
                                              spec.attribute_names, spec.attribute_values)}
  plumbing.write_json(os.path.join(workdir, 'attributes.json'), out)
  return out


def main(argv: list[str] | None = None) -> int:
  """Prints the scores as JSON. Exit 0, or 2 with one line on stderr."""
  parser = cli.OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='an attribute-conditioned GAN run')
  parser.add_argument('--steps', type=int, default=4000, help='classifier training steps')
  args = parser.parse_args(argv)
  if args.steps < 1:
    return cli.fail(PROG, f'--steps={args.steps} must be ≥ 1')
  try:
    print(json.dumps(score_run(args.workdir, args.steps), indent=1))
  except USER_ERRORS as e:
    return cli.fail(PROG, str(e))
  return 0


if __name__ == '__main__':
  sys.exit(main())
