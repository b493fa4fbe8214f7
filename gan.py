"""Trains a DCGAN, or samples from a trained one; flags and outputs: docs/gan.md.

  python gan.py                                          # configs/dcgan_digits.py
  python gan.py --mode=sample --workdir=runs/dcgan_digits --num_samples=64

In Python, `gan.main(['gan.py', '--mode=sample', '--workdir=...'])` runs the same job and
returns the exit code; it can be called again in the same process.
"""

import os
import signal
import sys

if __name__ == '__main__':  # a SIGTERM/SIGINT while the modules below load (seconds) is kept
  _early = lambda signum, _: setattr(_early, 'signal_name', signal.Signals(signum).name)  # noqa
  for _sig in (signal.SIGTERM, signal.SIGINT):  # as a request the CLI's PreemptionGuard takes
    signal.signal(_sig, _early)

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from hashjax.gan import job, sampling
from hashjax.runtime import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'dcgan_digits.py')
FLAGS = flags.FlagValues()
JOB_FLAGS = cli.define_job_flags(FLAGS, DEFAULT_CONFIG)
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'sample'],
                          'train, or write a sample grid from the newest checkpoint, with the '
                          "settings of the run's config.json (--config counts only for a run "
                          'without one).', flag_values=FLAGS)
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 64, 'Samples in the grid (--mode=sample).',
                                    flag_values=FLAGS)
_OUT = flags.DEFINE_string('out', None, 'PNG path for --mode=sample '
                           '(default <workdir>/samples/sample_<step>.png).', flag_values=FLAGS)
_ATTRIBUTES = flags.DEFINE_string(
    'attributes', None, 'For --mode=sample of a run conditioned on a label table: attribute '
    'values by name, e.g. hair=blue,eye=red (the others follow the training data).',
    flag_values=FLAGS)


def _run(config, workdir):
  if _MODE.value == 'sample':
    path = sampling.sample(config, workdir, _NUM_SAMPLES.value, _OUT.value,
                           _ATTRIBUTES.value)
    print(f'wrote {path}')
    return None
  reporter = cli.ProgressReporter(keys=('d_loss', 'g_loss', 'jsd_lower_bound'))
  return job.train_and_evaluate(config, workdir, reporter=reporter)


def main(argv):
  return cli.run_job('gan.py', argv, JOB_FLAGS, _run)


if __name__ == '__main__':
  exit_code = main(sys.argv)
  # The job is over. Python restores the default (fatal) SIGTERM/SIGINT handlers while it
  # shuts down, which takes a moment: a request now has nothing left to stop.
  for _sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_sig, signal.SIG_IGN)
  sys.exit(exit_code)
