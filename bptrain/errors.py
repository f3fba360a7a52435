"""The exceptions that map to bptrain's exit codes.

The CLI turns a ``UserError`` into a message and exit code 2 (bad config or
usage: the user can fix it), and a ``TrainingError`` into exit code 1 (the run
itself failed). Anything else is a bug in bptrain and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_TRAINING_FAILED = 1
EXIT_USAGE = 2
EXIT_DIAGNOSTIC_FLAGS = 3


class UserError(Exception):
    """A mistake the user can fix: bad config, missing file, unknown option."""


class ConfigError(UserError):
    """A config file or override that does not validate."""


class TrainingError(Exception):
    """The run started but could not finish (non-finite loss, I/O failure...)."""
