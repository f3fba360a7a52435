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


_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"


def message_of(err: BaseException) -> str:
    """The one line to print for `err`.

    A DataLoader worker's error reaches the main process with the worker's whole traceback
    pasted into its message ("Caught UserError in DataLoader worker process 0. Original
    Traceback..."): keep the worker's own message, and say which worker.
    """
    text = str(err)
    head, found, traceback = text.partition(_WORKER_TRACEBACK)
    if not found:
        return text
    lines = [line for line in traceback.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    exc_type, _, message = last.partition(": ")
    if not (message and all(part.isidentifier() for part in exc_type.split("."))):
        message = last  # not "module.ExceptionType: message"
    where = head.removeprefix("Caught ").split(" in ", 1)[-1].rstrip(".")
    return f"{message} ({where})"
