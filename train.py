"""Trains and evaluates a HashNet model; flags and outputs are described in README.md.

  python train.py                                    # configs/hashnet_digits.py
  python train.py --config=configs/hashnet_mnist.py --config.bits=48 --workdir=runs/mnist48
"""

import os
import sys

from hashjax import cli, hash_trainer

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'hashnet_digits.py')


def _train(config, workdir):
  reporter = cli.ProgressReporter(keys=('loss', 'beta'))
  return hash_trainer.train_and_evaluate(config, workdir, reporter=reporter)


def main(argv):
  return cli.run_job('train.py', argv, DEFAULT_CONFIG, _train)


if __name__ == '__main__':
  sys.exit(main(sys.argv))
