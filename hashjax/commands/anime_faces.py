"""Writes the anime-face repository's hair and eye tags as a label table for `gan.py`
(`hashjax.data.anime_faces`).

  python -m hashjax.commands.anime_faces data/Deep_Learning_GAN    # writes .../hair_eye.csv
"""

from __future__ import annotations

import os
import sys

from hashjax.data.anime_faces import convert
from hashjax.runtime import cli
from hashjax.runtime.errors import AnimeFacesError

PROG = 'anime_faces'


def main(argv: list[str] | None = None) -> int:
  """Writes the table and says how to train on it. Exit 0, or 2 with one line on stderr."""
  parser = cli.OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
  parser.add_argument('repo', help='a clone of github.com/antoncoding/Deep_Learning_GAN')
  parser.add_argument('--out', default=None, help='label table path (default REPO/hair_eye.csv)')
  args = parser.parse_args(argv)
  out = args.out or os.path.join(args.repo, 'hair_eye.csv')
  try:
    count, skipped = convert(os.path.join(args.repo, 'preprocessed', 'label.csv'), out)
  except (AnimeFacesError, OSError) as e:
    return cli.fail(PROG, str(e))
  if skipped:
    print(f'{PROG}: warning: skipped {len(skipped)} lines without exactly one eye and '
          f'one hair colour (e.g. {skipped[0]})', file=sys.stderr)
  faces = os.path.join(args.repo, 'faces')
  print(f'wrote {out}: {count} faces tagged with hair and eye colour; train with '
        f'--config.dataset=folder:{faces} --config.labels={out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
