"""Callbacks: the user's code at five named points of the loop, which it never replaces.

A callback is any object (``callbacks: [{class_path: ..., init_args: {...}}]``) with some
of these methods; subclassing ``Callback`` is optional and documents them:

    on_fit_start(run)                 # once, before the first step (also when resuming)
    on_train_batch_end(step, logs)    # after every optimizer step
    on_validation_end(metrics)        # after each validation, with the epoch's metrics
    on_checkpoint(path)               # after last.pt (or best.pt...) was written
    on_fit_end(summary)               # once, with what summary.json holds

``run`` (a ``RunInfo``) lets a callback read the run's state (run directory, config,
epoch, step, the model) and ``run.request_stop(reason)``: the loop then stops cleanly at
the next step boundary, saves ``last.pt`` and finishes with ``status: "stopped"``. A
callback cannot change the loop's state; its own state goes into checkpoints when it
defines ``state_dict()`` / ``load_state_dict(state)``, so it survives a resume.

``logs`` holds the step's logged values (``train/loss``, ``lr``, ``grad_norm``...) at log
steps (``logging.log_every_n_steps``) and is empty in between: fetching them from the
device every step would stall a GPU.

Callbacks run in the main process only (rank 0 under DDP), in the order listed. An exception
in one ends the run with exit 1, naming the callback and the method; the last good
checkpoint is kept.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bptrain.class_path import instantiate, resolve
from bptrain.errors import TrainingError, UserError

__all__ = ["HOOKS", "Callback", "CallbackList", "RunInfo", "build_callbacks"]

HOOKS = (
    "on_fit_start",
    "on_train_batch_end",
    "on_validation_end",
    "on_checkpoint",
    "on_fit_end",
)


class Callback:
    """Optional base class: every hook does nothing until overridden."""

    def on_fit_start(self, run: RunInfo) -> None:
        """Once before training (and again in a resumed run); keep ``run`` to read state later."""

    def on_train_batch_end(self, step: int, logs: dict[str, float]) -> None:
        """After optimizer step ``step`` (1-based); ``logs`` is empty between log steps."""

    def on_validation_end(self, metrics: dict[str, float]) -> None:
        """After a validation; ``metrics`` holds the epoch's values (``val/loss``, ``val/acc``...)."""

    def on_checkpoint(self, path: Path) -> None:
        """After a checkpoint file was written atomically at ``path``."""

    def on_fit_end(self, summary: dict[str, Any]) -> None:
        """Once at the end, with the run's summary (the contents of summary.json)."""


@dataclass
class RunInfo:
    """What callbacks may read about the run; ``request_stop`` is the one thing they may ask."""

    run_dir: Path
    config: dict[str, Any]  # a copy: changing it changes nothing
    model: Any  # the unwrapped nn.Module (read it; don't train it)
    world_size: int = 1
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    stop_reason: str | None = field(default=None, init=False)

    def request_stop(self, reason: str = "requested by a callback") -> None:
        """Stop cleanly at the next step boundary (last.pt is saved, summary.json says why)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self.stop_reason is not None


class CallbackList:
    """The configured callbacks, called in order; failures become a ``TrainingError`` naming the culprit."""

    def __init__(self, callbacks: list[tuple[str, Any]], enabled: bool = True) -> None:
        self.callbacks = callbacks  # (name for messages and checkpoint keys, object)
        self.enabled = (
            enabled  # False on DDP ranks other than 0: built (for their state), never called
        )
        self.run: RunInfo | None = None
        self.last_checkpoint: Path | None = None
        self.agreed_stop = False  # a stop every rank agreed on (see agree_on_stop)

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def on_fit_start(self, run: RunInfo) -> None:
        self.run = run
        self._call("on_fit_start", run)

    def on_train_batch_end(self, epoch: int, step: int, logs: dict[str, float]) -> None:
        if self.run is not None:
            self.run.epoch, self.run.step = epoch, step
        self._call("on_train_batch_end", step, dict(logs))
        self._agree_on_stop()

    def on_validation_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.epoch, self.run.step = epoch, step
        self._call("on_validation_end", dict(metrics))
        self._agree_on_stop()

    def wants(self, hook: str) -> bool:
        """A callback of this process defines `hook` (so the caller may prepare what it reads)."""
        return self.enabled and any(hasattr(callback, hook) for _, callback in self.callbacks)

    def on_checkpoint(self, path: Path) -> None:
        self._call("on_checkpoint", path)
        if path.name == "last.pt":
            self.last_checkpoint = path

    def on_fit_end(self, summary: dict[str, Any]) -> None:
        self._call("on_fit_end", dict(summary))

    @property
    def stop_reason(self) -> str | None:
        return None if self.run is None else self.run.stop_reason

    def _agree_on_stop(self) -> None:
        """Under DDP, rank 0's request reaches every rank (one all-reduce, only with callbacks)."""
        if self.callbacks and not self.agreed_stop:
            from bptrain import distributed

            self.agreed_stop = distributed.any_rank(self.stop_reason is not None)

    def _call(self, hook: str, *args: Any) -> None:
        if not self.enabled:
            return
        for name, callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception as err:
                last = self.last_checkpoint
                raise TrainingError(
                    f"callback {name}.{hook} raised {type(err).__name__}: {err}. The run stopped; "
                    f"the last good checkpoint is {last if last is not None and last.exists() else 'not written yet'}."
                ) from err

    def state_dict(self) -> dict[str, Any]:
        """Each stateful callback's state under ``<index>:<class_path>`` (checkpoint key ``callbacks``)."""
        return {
            name: callback.state_dict()
            for name, callback in self.callbacks
            if callable(getattr(callback, "state_dict", None))
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore by the same key: a callback added or reordered since starts fresh."""
        for name, callback in self.callbacks:
            if name in state and callable(getattr(callback, "load_state_dict", None)):
                try:
                    callback.load_state_dict(state[name])
                except Exception as err:
                    raise UserError(
                        f"callback {name}.load_state_dict could not restore its checkpointed state: "
                        f"{type(err).__name__}: {err}"
                    ) from None


def build_callbacks(entries: Iterable[Any], enabled: bool = True) -> CallbackList:
    """Import and build each ``callbacks:`` entry; one defining none of the hooks is refused."""
    built = []
    for index, entry in enumerate(entries):
        key = f"callbacks[{index}].class_path"
        target = resolve(
            entry.class_path, key, what="a callback class (or a function returning one)"
        )
        callback = instantiate(target, key, entry.class_path, entry.init_args)
        _check_hooks(callback, key, entry.class_path)
        built.append((f"{index}:{entry.class_path}", callback))
    return CallbackList(built, enabled)


def _check_hooks(callback: Any, key: str, class_path: str) -> None:
    defined = [h for h in HOOKS if callable(getattr(callback, h, None))]
    strays = [
        name
        for name in dir(callback)
        if name.startswith("on_") and name not in HOOKS and callable(getattr(callback, name))
    ]
    for name in strays:  # a hook bptrain never calls is almost always a typo
        close = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(
            f"{key} '{class_path}' defines {name}, which bptrain never calls.{hint} "
            f"The hooks are: {', '.join(HOOKS)}."
        )
    if not defined:
        raise UserError(
            f"{key} '{class_path}' defines none of the callback hooks ({', '.join(HOOKS)})."
        )
