"""Early stopping: when to stop because a monitored metric stopped improving. Pure: no torch, no files.

The semantics are Keras's (``keras.callbacks.EarlyStopping``), which Lightning shares
for everything both have:

- an *improvement* beats the best value so far by more than ``min_delta``, strictly
  (``value < best - min_delta`` in min mode, ``value > best + min_delta`` in max mode);
  the first counted value is always an improvement;
- ``patience`` counts *validations* (calls to ``update``) without improvement; the
  run stops when that count reaches ``patience`` (patience 0: the first
  non-improving validation stops it). The very first epoch never stops a run;
- ``baseline``: an improvement over the best still records the best, but the wait
  counter only resets when the value also beats the baseline. If nothing ever beats
  it, the run stops after ``patience`` validations;
- ``start_from_epoch``: validations of epochs ``<= start_from_epoch`` are ignored.

Where Keras and Lightning differ, bptrain decides (and docs/checkpointing.md says so):
a NaN/inf value stops the run at once with ``check_finite`` (Lightning's default;
Keras counts it as "no improvement", which ``check_finite: false`` gives); a missing
metric is an error listing the available ones (Lightning's ``strict``; Keras only
warns); a negative ``min_delta`` is refused by the config (Keras silently takes its
absolute value, Lightning loosens the test).

Epochs are 1-based here, as in metrics.jsonl and on the console.
"""

from __future__ import annotations

import math
from typing import Any

from bptrain.errors import UserError


class EarlyStopping:
    """Feed it the metrics after each validation; it says when to stop, why, and which epoch was best."""

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str = "min",
        patience: int = 0,
        min_delta: float = 0.0,
        baseline: float | None = None,
        start_from_epoch: int = 0,
        check_finite: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        if min_delta < 0:
            raise ValueError("min_delta must be >= 0")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.baseline = min_delta, baseline
        self.start_from_epoch, self.check_finite = start_from_epoch, check_finite
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.reason: str | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> EarlyStopping:
        return cls(
            monitor=cfg.monitor,
            mode=cfg.mode,
            patience=cfg.patience,
            min_delta=cfg.min_delta,
            baseline=cfg.baseline,
            start_from_epoch=cfg.start_from_epoch,
            check_finite=cfg.check_finite,
        )

    @property
    def should_stop(self) -> bool:
        return self.stopped_epoch is not None

    def is_improvement(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        if self.mode == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        """Record the metrics of a validation at (1-based) `epoch`; return True when training must stop.

        After the call, ``best_epoch == epoch`` says this validation was the new best.
        """
        if self.monitor not in metrics:
            raise UserError(
                f"early_stopping.monitor '{self.monitor}' is not among the logged metrics "
                f"({', '.join(sorted(k for k in metrics if '/' in k))}). Set trainer.early_stopping.monitor to one of them."
            )
        value = float(metrics[self.monitor])
        if epoch <= self.start_from_epoch or self.should_stop:
            return self.should_stop
        if not math.isfinite(value) and self.check_finite:
            return self._stop(epoch, f"{self.monitor} is {value} at epoch {epoch}")
        self.wait += 1
        if math.isfinite(value) and self.is_improvement(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.baseline is None or self.is_improvement(value, self.baseline):
                self.wait = 0
            return False
        if self.wait >= self.patience and epoch > 1:
            best = "none" if self.best is None else f"{self.best:.6g} at epoch {self.best_epoch}"
            beaten = (
                f" nor beat baseline {self.baseline}"
                if self.baseline is not None
                and (self.best is None or not self.is_improvement(self.best, self.baseline))
                else ""
            )
            return self._stop(
                epoch,
                f"{self.monitor} did not improve by more than {self.min_delta}{beaten} "
                f"for {self.wait} validation(s) (best {best})",
            )
        return False

    def _stop(self, epoch: int, reason: str) -> bool:
        self.stopped_epoch, self.reason = epoch, reason
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "reason": self.reason,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state.get("monitor", self.monitor), state.get("mode", self.mode))
        if saved != (self.monitor, self.mode):
            return  # a resume changed what is watched: its best and patience start afresh
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch, self.reason = (
            state["wait"],
            state["stopped_epoch"],
            state["reason"],
        )
