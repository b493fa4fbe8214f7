"""Writes fisher.npz (the diagonal Fisher, the prior of a later `laplace` update) for a
finished train.py run made without `save_fisher=True`.

  python -m hashjax.commands.fisher --workdir=RUN
"""

from __future__ import annotations

import logging
import os
import sys

from hashjax.hashing import job, update
from hashjax.runtime import cli
from hashjax.runtime.errors import USER_ERRORS, ConfigError

PROG = 'fisher'


def write_fisher(workdir: str) -> str:
  """Computes fisher.npz for the finished run in `workdir` from its final checkpoint and its
  own training images (what `save_fisher=True` does at the end of a run); returns its path."""
  base, _ = update.base_config(workdir)
  source, split = job.load_data(base)
  _, state, _ = update.load_base(workdir, source.images(split.train[:1]).shape[1:])
  path = os.path.join(workdir, job.FISHER_FILE)
  if not job.save_fisher(state, base, source, split, path):
    raise ConfigError(f'{path} was not written (the disk is full); free space and rerun')
  return path


def main(argv: list[str] | None = None) -> int:
  """Writes RUN/fisher.npz. Exit 0, or 2 with one line on stderr."""
  parser = cli.OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a finished train.py run')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  try:
    print(f'wrote {write_fisher(args.workdir)}')
  except USER_ERRORS as e:
    return cli.fail(PROG, str(e))
  return 0


if __name__ == '__main__':
  sys.exit(main())
