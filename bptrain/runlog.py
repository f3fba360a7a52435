"""The run directory and its metric records: ``metrics.jsonl`` and TensorBoard, behind one ``log``.

Every line of metrics.jsonl is one JSON object with a ``type`` (``step``,
``epoch``, ``test`` or ``event``), the global optimizer ``step`` and the metric
values, flushed as it is written, so a crash keeps everything logged so far and
``tail -f`` shows progress.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def create_run_dir(parent: Path, name: str) -> Path:
    """<parent>/<name>/<YYYYmmdd-HHMMSS>[-N]: sortable, and never reuses a directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = parent / name
    base.mkdir(parents=True, exist_ok=True)
    for suffix in ["", *(f"-{i}" for i in range(1, 1000))]:
        candidate = base / f"{stamp}{suffix}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {base}")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


class RunLog:
    """Appends metrics to metrics.jsonl and (optionally) TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.jsonl = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import (
                SummaryWriter,  # imported lazily: it is slow to import
            )

            self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def log(
        self, kind: str, step: int, metrics: dict[str, Any], tb_only: dict[str, float] | None = None
    ) -> None:
        record = {"type": kind, "step": step, **{k: _json_safe(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in {**metrics, **(tb_only or {})}.items():
                if (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and key not in ("step", "epoch")
                ):
                    self.tb.add_scalar(key, value, step)

    def histograms(self, step: int, values: dict[str, Any]) -> None:
        """TensorBoard histograms (weights, gradients, activations); a no-op without TensorBoard."""
        if self.tb is not None:
            for tag, tensor in values.items():
                self.tb.add_histogram(tag, tensor.cpu(), step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
