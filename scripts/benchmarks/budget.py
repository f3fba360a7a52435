"""Section ``budget``: the whole-process budget. ``bptrain fit``, the hand-written loop
(``scripts/bench_handwritten.py``) and Lightning (``benchmarks/lightning_loop.py``, when a
benchmark environment with Lightning exists) on the overhead-bound MLP and the MNIST-1D-style
CNN, as whole processes, side by side.

Each repetition runs the three in a rotated order (A B C, B C A, C A B, ...); reported are the
medians, and the ratios to the hand-written loop as the median of per-repetition ratios (runs a
few seconds apart see nearly the same load). The load average is read before every repetition
and reported with the numbers. bptrain's budget: <= 1.05x the hand-written loop, in whole-process
wall time and in steady-state step time (an epoch after the first, per step: the steps, logging,
validation and the checkpoint).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    SCRIPTS,
    Row,
    Settings,
    alternate,
    bptrain_command,
    epoch_records,
    fastest_step_ms,
    median,
    paired,
    run_process,
    steady_step_ms,
)
from benchmarks.workloads import newest_run

LIMIT = 1.05
LIGHTNING_PYTHON = Path(os.environ.get("BPTRAIN_BENCH_LIGHTNING_PYTHON", SCRIPTS.parent / ".venv-bench/bin/python"))  # fmt: skip


@dataclass
class Workload:
    section: str  # the table's label
    model: str  # mlp | cnn1d (bench_handwritten --model, the bptrain run name)
    config: Path
    data: Path
    epochs: int
    steps_per_epoch: int


def lightning_python() -> Path | None:
    """The benchmark environment's Python when it has Lightning, else None (the column says why)."""
    if not LIGHTNING_PYTHON.exists():
        return None
    import subprocess

    probe = subprocess.run(
        [str(LIGHTNING_PYTHON), "-c", "import lightning"], capture_output=True, check=False
    )
    return LIGHTNING_PYTHON if probe.returncode == 0 else None


def last_step_loss(metrics: Path) -> float:
    steps = [
        r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("type") == "step"
    ]
    return steps[-1]["train/loss"]


def budget(settings: Settings, workloads: list[Workload], reps: int) -> list[Row]:
    lightning = lightning_python()
    rows: list[Row] = []
    for w in workloads:
        rows.extend(_compare(settings, w, reps, lightning))
    return rows


def _compare(settings: Settings, w: Workload, reps: int, lightning: Path | None) -> list[Row]:
    loads: list[float] = []

    def measured(result: dict[str, Any], metrics: Path) -> dict[str, Any]:
        records = epoch_records(metrics)
        return {
            **result,
            "step_ms": steady_step_ms(records, w.steps_per_epoch),
            "fastest_ms": fastest_step_ms(records, w.steps_per_epoch),
            "loss": last_step_loss(metrics),
        }

    def bptrain(rep: int) -> dict[str, Any]:
        loads.append(os.getloadavg()[0])
        cmd = [*bptrain_command(), "fit", str(w.config), "trainer.device=cpu", f"logging.name={w.model}"]  # fmt: skip
        result = run_process(cmd, settings)
        return measured(result, newest_run(settings.work, w.model) / "metrics.jsonl")

    def script(python: str, path: Path, out: Path, extra: list[str]):
        def run(rep: int) -> dict[str, Any]:
            args = [f"--data={w.data}", f"--model={w.model}", f"--epochs={w.epochs}", f"--out={out}"]  # fmt: skip
            result = run_process([python, str(path), *args, *extra], settings)
            return measured(result, out / "metrics.jsonl")

        return run

    runners = {
        "bptrain": bptrain,
        "handwritten": script(
            sys.executable,
            SCRIPTS / "bench_handwritten.py",
            settings.work / f"hw-{w.model}",
            ["--device=cpu", "--tensorboard"],
        ),
    }
    if lightning is not None:
        runners["lightning"] = script(
            str(lightning),
            SCRIPTS / "benchmarks" / "lightning_loop.py",
            settings.work / f"pl-{w.model}",
            [],
        )
    runs = alternate(reps, runners)
    hw = runs["handwritten"]
    losses = {name: r[-1]["loss"] for name, r in runs.items()}
    same = len(set(losses.values())) == 1
    load = f"load avg {statistics.median(loads):.1f} ({min(loads):.1f}-{max(loads):.1f})"
    note = (
        f"{reps} reps; {load}; last logged train/loss "
        + " / ".join(f"{v:.6g}" for v in losses.values())
        + (" (identical)" if same else " (DIFFERENT)")
    )
    steps = w.epochs * w.steps_per_epoch
    rows = []
    for key, name, unit in (
        ("wall", f"whole process, {steps} steps (wall)", "s"),
        ("cpu", "whole process (CPU time)", "s"),
        ("step_ms", "steady-state step (epochs 2+, wall)", "ms"),
        ("fastest_ms", "steady-state step, fastest epoch (least interference)", "ms"),
    ):
        bp = [r[key] for r in runs["bptrain"]]
        base = [r[key] for r in hw]
        row = Row(w.section, name, median(bp), median(base), unit, pair_ratio=paired(bp, base))
        if lightning is not None:
            pl = [r[key] for r in runs["lightning"]]
            row.lightning, row.lightning_ratio = median(pl), paired(pl, base)
        else:
            row.lightning_note = f"no Lightning: {LIGHTNING_PYTHON} missing (docs/benchmarks.md)"
        if key in ("wall", "step_ms"):
            row.budget, row.ok = f"<= {LIMIT:.2f}", row.ratio is not None and row.ratio <= LIMIT
        row.load = load
        rows.append(row)
    rows[0].note = note
    return rows
