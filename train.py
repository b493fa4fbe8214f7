"""Trains and evaluates a HashNet model; flags and outputs: docs/training.md.

  python train.py                                    # configs/hashnet_digits.py
  python train.py --config=configs/hashnet_mnist.py --config.bits=48 --workdir=runs/mnist48

In Python, `train.main(['train.py', '--config.bits=16'])` runs the same job and returns the
exit code; it can be called again in the same process.
"""

import os
import signal
import sys

if __name__ == '__main__':  # a SIGTERM/SIGINT while the modules below load (seconds) is kept
  _early = lambda signum, _: setattr(_early, 'signal_name', signal.Signals(signum).name)  # noqa
  for _sig in (signal.SIGTERM, signal.SIGINT):  # as a request the CLI's PreemptionGuard takes
    signal.signal(_sig, _early)

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from hashjax.hashing import run
from hashjax.runtime import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'hashnet_digits.py')
FLAGS = flags.FlagValues()
JOB_FLAGS = cli.define_job_flags(FLAGS, DEFAULT_CONFIG)


def _train(config, workdir):
  reporter = cli.ProgressReporter(keys=('loss', 'beta'))
  return run.train_and_evaluate(config, workdir, reporter=reporter)


def main(argv):
  return cli.run_job('train.py', argv, JOB_FLAGS, _train)


if __name__ == '__main__':
  exit_code = main(sys.argv)
  # The job is over. Python restores the default (fatal) SIGTERM/SIGINT handlers while it
  # shuts down, which takes a moment: a request now has nothing left to stop.
  for _sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_sig, signal.SIG_IGN)
  sys.exit(exit_code)
