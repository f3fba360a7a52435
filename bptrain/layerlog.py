"""``grad_norms.jsonl``: per-layer gradient flow at log steps, written by ``fit``, read by ``report``.

TensorBoard keeps one scalar curve per layer, which nobody can read as a whole and
which needs TensorBoard to open. This file keeps the same numbers as a matrix that
``bptrain report`` turns into a layer x step heatmap, readable with any JSON tool:

    {"layers": ["net.0", "net.2", "net.4"]}
    {"step": 20, "grad_norm": [0.0012, 0.031, 0.42], "update_ratio": [0.0009, 0.0011, 0.002]}
    {"step": 40, "grad_norm": [...], "update_ratio": [...], "nonfinite": [0, 3, 0]}

The first line (repeated when a resumed run reopens the file) names the layers in
forward order; every other line is one log step, the lists in that order. Values
keep 4 significant digits; ``null`` is a layer with no gradient (or NaN), ``"inf"``
an overflow; ``nonfinite`` (non-finite gradient elements per layer) appears only
when some are. Lines are appended and flushed one at a time, so a crash loses at
most the line being written: the reader skips a cut-off last line, and when steps
go backwards (a run resumed from an earlier checkpoint) it drops the stale rows
the resumed run is replacing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILENAME = "grad_norms.jsonl"
_PREFIXES = {
    "grad_norm": "grad_norm/layer/",
    "update_ratio": "update_ratio/layer/",
    "nonfinite": "nonfinite_grads/layer/",
}


def _compact(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(f"{value:.4g}")


class LayerLogWriter:
    """Appends one line per log step to ``<run_dir>/grad_norms.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / FILENAME
        self.file = self.path.open("a", encoding="utf-8")
        self.layers: list[str] | None = None

    def write(self, step: int, stats: dict[str, float]) -> None:
        """`stats` is what ``LogStepRecorder.take`` returns (``grad_norm/layer/<path>`` ...)."""
        if self.layers is None:
            prefix = _PREFIXES["grad_norm"]
            self.layers = [key[len(prefix) :] for key in stats if key.startswith(prefix)]
            if not self.layers:
                return
            self.file.write(json.dumps({"layers": self.layers}) + "\n")
        record: dict[str, Any] = {"step": step}
        for name, prefix in _PREFIXES.items():
            values = [stats.get(prefix + layer) for layer in self.layers]
            if all(v is None for v in values):
                continue
            if name == "nonfinite":
                if not any(v for v in values):
                    continue
                record[name] = [int(v or 0) for v in values]
            else:
                record[name] = [None if v is None else _compact(v) for v in values]
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class LayerLog:
    """The matrix a run's grad_norms.jsonl holds: rows are log steps, columns layers (forward order)."""

    layers: list[str]
    steps: list[int] = field(default_factory=list)
    grad_norm: list[list[float]] = field(default_factory=list)
    update_ratio: list[list[float]] = field(default_factory=list)
    nonfinite: list[list[int]] = field(default_factory=list)


def _value(raw: Any) -> float:
    if raw is None:
        return math.nan
    if isinstance(raw, str):
        return float(raw)  # "inf" / "-inf"
    return float(raw)


def read_layer_log(path: Path) -> LayerLog | None:
    """Read grad_norms.jsonl as written, or None when there is none (or it names no layers)."""
    path = Path(path)
    if not path.is_file():
        return None
    log: LayerLog | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a crash cut off
        if not isinstance(record, dict):
            continue
        if "layers" in record:
            if log is None or record["layers"] != log.layers:
                log = LayerLog(layers=[str(name) for name in record["layers"]])
            continue
        if log is None or not isinstance(record.get("step"), int):
            continue
        n, step = len(log.layers), record["step"]
        while log.steps and log.steps[-1] >= step:  # a resumed run rewrites these steps
            for rows in (log.steps, log.grad_norm, log.update_ratio, log.nonfinite):
                rows.pop()
        try:
            norms = [_value(v) for v in record.get("grad_norm", [None] * n)]
            ratios = [_value(v) for v in record.get("update_ratio", [None] * n)]
            counts = [int(v) for v in record.get("nonfinite", [0] * n)]
        except (TypeError, ValueError):
            continue
        if not len(norms) == len(ratios) == len(counts) == n:
            continue
        log.steps.append(step)
        log.grad_norm.append(norms)
        log.update_ratio.append(ratios)
        log.nonfinite.append(counts)
    return log
