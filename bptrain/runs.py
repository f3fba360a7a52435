"""``bptrain runs``: one table of the runs under a directory, read back from their run directories.

A run directory is any directory holding the ``config.yaml`` that ``fit`` writes first (see the
README, "The run directory"). Everything shown comes from its files, so the table works on runs
copied from a cluster, runs of older versions and runs still going:

- status: ``summary.json``'s ``status`` (completed, early_stopped, ...); without a summary,
  ``failed`` when ``nan_report.json`` exists, ``interrupted`` when the last event in
  ``metrics.jsonl`` says so (resume it with ``fit --resume``), ``pruned`` when a search pruned it,
  else ``running`` (or a run that crashed without a word);
- config: only the keys whose values differ between the runs listed (``logging.*`` excluded: the
  run name and directory differ by construction);
- metrics: the last epoch line's and the best epoch's (``summary.json``'s ``best``, else the best
  ``val/loss`` seen so far in ``metrics.jsonl``).

Nothing here imports torch: the command is quick on a login node.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bptrain.config_diff import differences, flatten
from bptrain.errors import UserError
from bptrain.safe_yaml import read_text, safe_load

IGNORED_PREFIXES = ("logging.",)


@dataclass
class RunInfo:
    """What one run directory says about its run."""

    path: Path
    status: str
    config: dict[str, Any]  # flattened: dotted key -> value
    epochs: int | None = None
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: int | None = None
    test: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None


def find_run_dirs(root: Path) -> list[Path]:
    """Every directory under root (root included) with a config.yaml and a metrics.jsonl or summary."""
    if not root.exists():
        raise UserError(
            f"{root}: no such directory. Pass the logging.run_dir of your runs (default: runs)."
        )
    found = []
    for config in sorted(root.rglob("config.yaml")):
        run = config.parent
        if (run / "metrics.jsonl").exists() or (run / "summary.json").exists():
            found.append(run)
    return found


def _numbers(record: dict[str, Any] | None) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in (record or {}).items()
        if "/" in k and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:  # a line being written right now
            continue
    return records


def read_run(path: Path) -> RunInfo:
    """Read one run directory; never raises for a run that is unfinished or half-written."""
    try:
        config = safe_load(read_text(path / "config.yaml")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        config = {}
    info = RunInfo(path=path, status="running", config=flatten(config))
    records = _read_metrics(path / "metrics.jsonl")
    epochs = [r for r in records if r.get("type") == "epoch"]
    events = [r.get("event") for r in records if r.get("type") == "event"]
    summary = _read_json(path / "summary.json")
    if summary is not None:
        info.status = str(summary.get("status", "completed"))
        info.epochs = summary.get("epochs")
        info.final = _numbers(summary.get("final"))
        best = summary.get("best") or {}
        info.best = _numbers(best)
        info.best_epoch = best.get("epoch")
        info.test = _numbers(summary.get("test"))
        info.wall_time_s = summary.get("wall_time_s")
        return info
    if (path / "nan_report.json").exists():
        info.status = "failed"
    elif events and events[-1] in ("interrupted", "pruned"):
        info.status = str(events[-1])
    if epochs:
        info.epochs = epochs[-1].get("epoch")
        info.final = _numbers(epochs[-1])
        validated = [r for r in epochs if isinstance(r.get("val/loss"), int | float)]
        if validated:
            best = min(validated, key=lambda r: r["val/loss"])
            info.best, info.best_epoch = _numbers(best), best.get("epoch")
    return info


def differing_keys(runs: list[RunInfo]) -> list[str]:
    """Config keys whose value is not the same in every run (a key missing in some run differs)."""
    return [
        key
        for key in differences([run.config for run in runs])
        if not key.startswith(IGNORED_PREFIXES)
    ]


def _short(value: Any) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def rows(runs: list[RunInfo], root: Path) -> list[dict[str, Any]]:
    """One JSON-friendly row per run: its path, status, differing config values and metrics."""
    differs = differing_keys(runs)
    out = []
    for run in runs:
        try:
            name = str(run.path.relative_to(root))
        except ValueError:
            name = str(run.path)
        row: dict[str, Any] = {
            "run": name if name != "." else run.path.name,
            "path": str(run.path),
            "status": run.status,
            "config": {k: run.config.get(k) for k in differs},
            "epochs": run.epochs,
            "final": run.final,
            "best": run.best,
            "best_epoch": run.best_epoch,
            "test": run.test,
            "wall_time_s": run.wall_time_s,
        }
        out.append(row)
    return out


def metric_columns(table: list[dict[str, Any]]) -> list[str]:
    """Columns shown: final val/* metrics, then best val/* metrics ("best val/acc"), then test."""
    finals = list(dict.fromkeys(k for r in table for k in r["final"] if k.startswith("val/")))
    if not finals:  # no validation split: show what there is (train/loss)
        finals = list(dict.fromkeys(k for r in table for k in r["final"]))
    bests = list(
        dict.fromkeys(f"best {k}" for r in table for k in r["best"] if k.startswith("val/"))
    )
    tests = list(dict.fromkeys(k for r in table for k in r["test"]))
    return [*finals, *bests, *tests]


def value_of(row: dict[str, Any], column: str) -> Any:
    """A row's value in a table column: a metric, a config key, or a field (status, epochs...)."""
    if column.startswith("best "):
        return row["best"].get(column[5:])
    for part in ("final", "test", "config"):
        if column in row[part]:
            return row[part][column]
    return row.get(column)


def sort_rows(
    table: list[dict[str, Any]], column: str | None, descending: bool
) -> list[dict[str, Any]]:
    """Sort by a column; rows without a value (NaN, missing) go last whatever the direction."""
    if column is None:
        return table
    known = {"run", "status", "epochs", "wall_time_s", "best_epoch", *metric_columns(table)}
    known |= {k for r in table for k in r["config"]} | {
        k for r in table for part in ("final", "test") for k in r[part]
    }
    known |= {f"best {k}" for r in table for k in r["best"]}
    if column not in known:
        raise UserError(
            f"--sort {column}: no such column. Sort by one of: {', '.join(sorted(known))}."
        )

    def present(row: dict[str, Any]) -> bool:
        value = value_of(row, column)
        return value is not None and not (isinstance(value, float) and math.isnan(value))

    have = [r for r in table if present(r)]
    lacking = [r for r in table if not present(r)]

    def key(row: dict[str, Any]) -> tuple[int, Any]:
        value = value_of(row, column)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, value)
        return (1, _short(value))

    return sorted(have, key=key, reverse=descending) + lacking


def list_runs(
    root: Path, sort: str | None = None, descending: bool = False
) -> list[dict[str, Any]]:
    """The rows of ``bptrain runs ROOT``, sorted as asked (default: by run directory, oldest first)."""
    runs = [read_run(p) for p in find_run_dirs(root)]
    return sort_rows(rows(runs, root), sort, descending)


def print_runs(console: Any, table: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not table:
        console.print("no runs found")
        return
    metrics = metric_columns(table)
    differs = list(dict.fromkeys(k for r in table for k in r["config"]))
    out = Table(title=f"{len(table)} run(s)", header_style="bold")
    out.add_column("run", overflow="fold")
    out.add_column("status")
    out.add_column("config (what differs)", overflow="fold")
    out.add_column("epochs", justify="right")
    for column in metrics:
        out.add_column(column, justify="right")
    for row in table:
        config = " ".join(f"{k}={_short(row['config'][k])}" for k in differs)
        cells = []
        for column in metrics:
            value = value_of(row, column)
            cells.append("" if value is None else f"{value:.4f}")
        out.add_row(row["run"], row["status"], config, _short(row["epochs"] or ""), *cells)
    console.print(out)
