"""Converts a PyTorch checkpoint (a torchvision state dict) to the .npz state dict that the
hashing config's `pretrained=` reads (needs PyTorch; the CPU build is enough).

  python -m hashjax.commands.pretrained MODEL.pth OUT.npz
"""

from __future__ import annotations

import sys

from hashjax.hashing.pretrained import convert_torch
from hashjax.runtime import cli
from hashjax.runtime.errors import PretrainedError

PROG = 'pretrained'


def main(argv: list[str] | None = None) -> int:
  """Writes OUT.npz. Exit 0, or 2 with one line on stderr."""
  parser = cli.OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
  parser.add_argument('source', help='a .pth file: a state dict, {"state_dict": ...} or a module')
  parser.add_argument('out', help='the .npz to write')
  args = parser.parse_args(argv)
  try:
    n = convert_torch(args.source, args.out)
  except PretrainedError as e:
    return cli.fail(PROG, str(e))
  print(f'wrote {n} arrays to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
