"""The garbage collector around a training run.

Importing torch, pydantic and the CLI and building a run leave some 300,000 objects that live as
long as the process, and CPython's collector walks every one of them at each full collection:
during a ``bptrain fit`` start-up that was five full collections, about 0.4 s of CPU on a 2-core
machine (as much as the rest of bptrain's own start-up), and another 0.15 s at the end. So the
``fit`` command holds collection off while it imports and sets up (``hold``), and the loop
freezes what exists when training begins (``gc.freeze``: never walked again) and turns
collection back on (``training_begins``); cycles made while training are collected as usual.
Garbage left by set-up is frozen with the rest: bounded, once per process.
``training_ends`` hands the frozen objects back to the collector when the process goes on (the
Python API, a search running many trials in one process must not keep each trial's leftovers).
"""

from __future__ import annotations

import gc

_held = False
_command = False  # a `bptrain fit` process: it ends with its run


def hold() -> None:
    """No collection from here until training begins (or ``release``): set-up allocates what lives
    for the whole run."""
    global _held, _command
    _command = True
    if gc.isenabled():
        gc.disable()
        _held = True


def release() -> None:
    """The command is over: collection back on if ``hold`` turned it off (set-up failed before
    training), and a later fit in this process (tests, the API) hands its frozen objects back."""
    global _command
    _resume()
    _command = False


def training_begins() -> None:
    gc.freeze()
    _resume()


def training_ends() -> None:
    """The frozen objects back to the collector, unless this process ends with the run: handing
    back 500,000 objects costs one full collection (~0.3 s) just before the exit frees them."""
    if not _command:
        gc.unfreeze()


def _resume() -> None:
    global _held
    if _held:
        gc.enable()
        _held = False
