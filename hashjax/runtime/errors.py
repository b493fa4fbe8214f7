"""The error types of hashjax, in one module at the bottom of the package.

Every error a user can cause carries one line that names the bad value and what is accepted;
the commands print it as `PROG: error: <line>` and exit with code 2 (`USER_ERRORS`), or 1 for
a run that could not save its final state (`CheckpointError`, `DivergedError`).
"""

from __future__ import annotations

import zipfile
import zlib


class ConfigError(ValueError):
  """A configuration value that cannot be used."""


class WorkdirError(ConfigError):
  """A workdir that cannot be used (a file, not writable, held by another run, or a resume
  with settings its checkpoints were not trained with)."""


class DataError(ValueError):
  """A data source or split that cannot be used; the message says what is accepted."""


class ParallelError(ValueError):
  """A batch size or topology that cannot be laid out on the devices."""


class PretrainedError(ValueError):
  """A weight file that does not fit the backbone: the message names the key."""


class SearchError(ValueError):
  """Bad input to a search (topk, query index, a missing or malformed codes file)."""


class BackendError(ValueError):
  """An unknown search backend, or one whose library is not installed."""


class BaselineError(ValueError):
  """Inputs a shallow baseline cannot use (wrong shape, more bits than dimensions)."""


class AnimeFacesError(ValueError):
  """The anime-face repository's files are missing or not in the expected format."""


class CheckpointError(RuntimeError):
  """A checkpoint that must exist (the final one) could not be written."""


class ResultsNotWritten(CheckpointError):
  """The final results could not be written (a full disk); the final checkpoint was saved,
  unless metrics rows were kept out too (a rerun then trains the last steps again)."""


class DivergedError(RuntimeError):
  """A loss became NaN or infinite; the message names the step and the last good checkpoint."""


# Errors of bad input: one line and exit code 2 in every command.
USER_ERRORS = (ConfigError, DataError, PretrainedError, ParallelError)

# What np.load raises for a file that is cut short or is no archive.
UNREADABLE_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
