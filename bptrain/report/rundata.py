"""Read one run directory into plain Python data, whatever state the run was left in.

A report is often made of a run that crashed, was killed, or is still going: every
file is optional, a cut-off last line of a ``.jsonl`` is skipped, and what is
missing is said on the page instead of failing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bptrain.config_diff import differences, flatten
from bptrain.errors import UserError
from bptrain.layerlog import FILENAME as LAYER_LOG
from bptrain.layerlog import LayerLog, read_layer_log

GRAD_INSPECT = "grad_inspect.json"
"""A grad-inspect result kept in the run directory (``--json RUN_DIR/grad_inspect.json``)."""


@dataclass
class Event:
    """Something to mark on the time axis."""

    step: int
    kind: str  # "nonfinite" | "clipped" | "interrupted" | "early_stopped" | "skipped"
    text: str


@dataclass
class Run:
    path: Path
    label: str = ""
    config: dict[str, Any] | None = None
    config_text: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    tests: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    layers: LayerLog | None = None
    grad_inspect: dict[str, Any] | None = None
    nan_report: dict[str, Any] | None = None
    checkpoints: list[tuple[str, int, float]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.summary is not None:
            return str(self.summary.get("status", "completed"))
        if any(e.get("event") == "interrupted" for e in self.events):
            return "interrupted"
        if self.nan_report is not None:
            return "failed (non-finite)"
        return "incomplete (no summary.json: still running, crashed or killed)"

    def clip_threshold(self) -> float | None:
        clip = ((self.config or {}).get("trainer") or {}).get("grad_clip") or {}
        value = clip.get("max_norm") if isinstance(clip, dict) else None
        return float(value) if isinstance(value, int | float) else None

    def marks(self) -> list[Event]:
        """Non-finite steps, clipped steps, interruptions and early stopping, in step order."""
        marks: list[Event] = []
        clip = self.clip_threshold()
        skipped = amp = 0
        for row in self.steps:
            step, norm = row["step"], _number(row.get("grad_norm"))
            loss = _number(row.get("train/loss"))
            if not math.isfinite(loss) or (
                row.get("grad_norm") is not None and not math.isfinite(norm)
            ):
                marks.append(
                    Event(step, "nonfinite", f"non-finite loss or gradient at step {step}")
                )
            elif clip is not None and norm > clip:
                marks.append(
                    Event(step, "clipped", f"gradient norm {norm:.3g} clipped to {clip:g}")
                )
            for key, kind in (("skipped_steps", "skipped"), ("amp_skipped_steps", "skipped")):
                count = row.get(key)
                if isinstance(count, int):
                    seen = skipped if key == "skipped_steps" else amp
                    if count > seen:
                        marks.append(
                            Event(
                                step, kind, f"{count - seen} {key.replace('_', ' ')} by step {step}"
                            )
                        )
                    if key == "skipped_steps":
                        skipped = count
                    else:
                        amp = count
        if self.layers is not None:
            for step, counts in zip(self.layers.steps, self.layers.nonfinite, strict=True):
                bad = [name for name, c in zip(self.layers.layers, counts, strict=True) if c]
                if bad:
                    marks.append(
                        Event(step, "nonfinite", f"non-finite gradients in {', '.join(bad)}")
                    )
        for event in self.events:
            kind = str(event.get("event", "event"))
            details = {k: v for k, v in event.items() if k not in ("type", "step", "event")}
            text = kind + (f": {json.dumps(details, default=str)}" if details else "")
            marks.append(Event(int(event.get("step", 0)), kind, text))
        return sorted(marks, key=lambda e: e.step)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # "inf" / "-inf" as runlog writes them
        except ValueError:
            return math.nan
    return math.nan


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a crash
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The parsed config and its text (bounded: a run directory may come from anyone)."""
    import yaml

    from bptrain.safe_yaml import read_text, safe_load

    try:
        text = read_text(path)
        data = safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None, None
    return (data if isinstance(data, dict) else None), text


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "summary.json").is_file()


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path is a run directory, or a folder holding runs (a sweep, runs/<name>/): expand those."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise UserError(
                f"{path}: no such directory. Pass run directories printed by `bptrain fit`."
            )
        if is_run_dir(path):
            found.append(path)
            continue
        nested = sorted(
            {p.parent for p in path.glob("**/metrics.jsonl") if len(p.relative_to(path).parts) <= 4}
        )
        if not nested:
            raise UserError(
                f"{path} is not a run directory (no metrics.jsonl or summary.json in it or below it). "
                "Pass the directory `bptrain fit` printed as 'run directory'."
            )
        found.extend(nested)
    unique: list[Path] = []
    for path in found:
        if path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    return unique


def load_run(path: Path) -> Run:
    records = _read_jsonl(path / "metrics.jsonl")
    run = Run(path=path)
    for record in records:
        if not isinstance(record.get("step"), int):
            continue
        kind = record.get("type")
        target = {"step": run.steps, "epoch": run.epochs, "test": run.tests, "event": run.events}
        if kind in target:
            target[kind].append(record)
    run.config, run.config_text = _read_config(path / "config.yaml")
    run.summary = _read_json(path / "summary.json")
    run.layers = read_layer_log(path / LAYER_LOG)
    run.grad_inspect = _read_json(path / GRAD_INSPECT)
    run.nan_report = _read_json(path / "nan_report.json")
    ckpt_dir = path / "checkpoints"
    if ckpt_dir.is_dir():
        for file in sorted(ckpt_dir.iterdir()):
            if file.is_file() and not file.name.endswith(".tmp"):
                stat = file.stat()
                run.checkpoints.append((file.name, stat.st_size, stat.st_mtime))
    return run


def config_differences(runs: list[Run]) -> dict[str, list[Any]]:
    """Dotted config keys whose values differ between the runs (a missing key counts as different),
    sorted, with each run's value."""
    diff = differences([flatten(run.config or {}) for run in runs])
    return dict(sorted(diff.items()))


def label_runs(runs: list[Run]) -> None:
    """Name each run by what sets it apart: its differing config values, else its directory."""
    if len(runs) == 1:
        runs[0].label = "/".join(runs[0].path.resolve().parts[-2:])
        return
    diff = {
        k: v
        for k, v in config_differences(runs).items()
        if not k.startswith("logging.") and not k.startswith("trainer.device")
    }
    for i, run in enumerate(runs):
        parts = [f"{k.split('.')[-1]}={_short(v[i])}" for k, v in diff.items()][:3]
        run.label = " ".join(parts) if parts else "/".join(run.path.resolve().parts[-2:])
    labels = [run.label for run in runs]
    for i, run in enumerate(runs):
        if labels.count(run.label) > 1:
            run.label = f"{run.label} #{i + 1}"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:23] + "…"
