"""What every benchmark shares: the result ``Row``, the run ``Settings``, timing helpers
(alternating repetitions, paired ratios, child processes with their CPU time and peak RSS) and
the results table."""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent.parent  # scripts/


@dataclass
class Row:
    """One line of the results table."""

    section: str
    name: str
    bptrain: float | None
    handwritten: float | None = None
    unit: str = ""
    budget: str = ""
    ok: bool | None = None
    note: str = ""
    pair_ratio: float | None = None  # set when pairs of runs give a better ratio than two medians
    lightning: float | None = None  # the budget section's third column
    lightning_ratio: float | None = None  # Lightning / hand-written, median of per-rep ratios
    lightning_note: str = ""
    load: str = ""  # the load average while the row was measured

    @property
    def ratio(self) -> float | None:
        if self.pair_ratio is not None:
            return self.pair_ratio
        if self.bptrain is None or not self.handwritten:
            return None
        return self.bptrain / self.handwritten


@dataclass
class Settings:
    quick: bool
    threads: int
    work: Path
    env: dict[str, str] = field(default_factory=dict)

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def median(values: list[float]) -> float:
    return statistics.median(values)


def bptrain_command() -> list[str]:
    """The ``bptrain`` console script next to this Python (what users run), else ``python -m bptrain``."""
    script = Path(sys.executable).with_name("bptrain")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bptrain"]


def run_process(cmd: list[str], settings: Settings, cwd: Path | None = None) -> dict[str, float]:
    """Run a command to completion; return its wall time, CPU time and peak RSS (this process only)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd or settings.work,
        env=settings.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
    }


def epoch_records(metrics: Path) -> list[dict[str, Any]]:
    lines = metrics.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == "epoch"]


def steady_step_ms(records: list[dict[str, Any]], steps_per_epoch: int) -> float:
    """Median wall time of one epoch after the first (warm-up), per optimizer step, in ms.

    An epoch here is everything the loop does: the steps, logging, validation and the checkpoint.
    """
    return median(epoch_times(records)) / steps_per_epoch * 1000


def fastest_step_ms(records: list[dict[str, Any]], steps_per_epoch: int) -> float:
    """The fastest epoch after the first, per optimizer step, in ms. Every epoch does the same
    work and another job on the machine can only add time, so the fastest epoch estimates a
    loop's own cost with the least interference (as ``timeit`` takes the minimum)."""
    return min(epoch_times(records)) / steps_per_epoch * 1000


def epoch_times(records: list[dict[str, Any]]) -> list[float]:
    times = [r["time"] for r in records]  # seconds since training started, at each epoch's end
    return [b - a for a, b in itertools.pairwise(times)]


def paired(a: list[float], b: list[float]) -> float:
    """Median of per-repetition ratios a[i] / b[i]: runs of one repetition saw nearly the same load."""
    return median([x / y for x, y in zip(a, b, strict=True)])


def alternate(reps: int, runners: dict[str, Callable[[int], Any]]) -> dict[str, list[Any]]:
    """Run every runner `reps` times, rotating the order each repetition so drift hits all alike."""
    names = list(runners)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(runners[name](rep))
    return results


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def machine() -> str:
    import torch

    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{model}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("s",):
        return f"{value:.3f} s"
    if unit == "samples/s":
        return f"{value:,.0f}/s"
    if unit == "syncs":
        return f"{value:.0f}"
    return f"{value:.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def budget_table(rows: list[Row]) -> str:
    """The budget rows side by side: hand-written, bptrain, Lightning, the ratios, the load."""
    lines = [
        "| workload | measure | hand-written | bptrain | Lightning | bptrain / hand-written | "
        "Lightning / hand-written | budget | load average |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        pl_ratio = "-" if r.lightning_ratio is None else f"{r.lightning_ratio:.3f}"
        pl = fmt(r.lightning, r.unit) if r.lightning is not None else (r.lightning_note or "-")
        budget = r.budget + ("" if r.ok is None else (" ok" if r.ok else " MISSED"))
        lines.append(
            f"| {r.section} | {r.name} | {fmt(r.handwritten, r.unit)} | {fmt(r.bptrain, r.unit)} | "
            f"{pl} | {ratio} | {pl_ratio} | {budget} | {r.load} |"
        )
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    lines = [
        "| section | benchmark | bptrain | hand-written / baseline | ratio | budget | note |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        budget = r.budget + ("" if r.ok is None else (" ok" if r.ok else " MISSED"))
        lines.append(
            f"| {r.section} | {r.name} | {fmt(r.bptrain, r.unit)} | {fmt(r.handwritten, r.unit)} | "
            f"{ratio} | {budget} | {r.note} |"
        )
    return "\n".join(lines)
