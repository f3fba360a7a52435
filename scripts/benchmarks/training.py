"""Sections ``cnn`` and ``overhead``: ``bptrain fit`` against ``scripts/bench_handwritten.py``, as
whole processes (``cnn``: wall time, CPU time, steady-state step, peak RSS) and in one process
(``overhead``: pairs of 2-epoch runs, the second epoch timed)."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import (
    SCRIPTS,
    Row,
    Settings,
    alternate,
    bptrain_command,
    epoch_records,
    median,
    paired,
    run_process,
    steady_step_ms,
)
from benchmarks.workloads import newest_run


def compare_training(
    settings: Settings,
    section: str,
    model: str,
    config: Path,
    data: Path,
    epochs: int,
    steps_per_epoch: int,
    reps: int,
    device: str,
) -> list[Row]:
    """`bptrain fit` vs `python bench_handwritten.py`: whole-process wall time, steady-state step, peak RSS."""
    overrides = [f"trainer.device={device}", f"logging.name={model}"]

    def bptrain(rep: int) -> dict[str, Any]:
        result = run_process([*bptrain_command(), "fit", str(config), *overrides], settings)
        records = epoch_records(newest_run(settings.work, model) / "metrics.jsonl")
        return {
            **result,
            "step_ms": steady_step_ms(records, steps_per_epoch),
            "loss": records[-1]["train/loss"],
        }

    def handwritten(rep: int) -> dict[str, Any]:
        out = settings.work / f"hw-{model}"
        cmd = [
            sys.executable,
            str(SCRIPTS / "bench_handwritten.py"),
            f"--data={data}",
            f"--model={model}",
            f"--epochs={epochs}",
            f"--device={device}",
            "--tensorboard",
            f"--out={out}",
        ]
        result = run_process(cmd, settings)
        records = epoch_records(out / "metrics.jsonl")
        return {
            **result,
            "step_ms": steady_step_ms(records, steps_per_epoch),
            "loss": records[-1]["train/loss"],
        }

    runs = alternate(reps, {"bptrain": bptrain, "handwritten": handwritten})
    bp, hw = runs["bptrain"], runs["handwritten"]
    same = bp[-1]["loss"] == hw[-1]["loss"]
    note = f"final train/loss {bp[-1]['loss']:.6g} vs {hw[-1]['loss']:.6g} ({'identical' if same else 'DIFFERENT'})"
    steps = epochs * steps_per_epoch
    wall = Row(
        section,
        f"whole process, {steps} steps (wall)",
        median([r["wall"] for r in bp]),
        median([r["wall"] for r in hw]),
        "s",
        note=note,
        pair_ratio=paired([r["wall"] for r in bp], [r["wall"] for r in hw]),
    )
    cpu = Row(
        section,
        "whole process (CPU time)",
        median([r["cpu"] for r in bp]),
        median([r["cpu"] for r in hw]),
        "s",
        pair_ratio=paired([r["cpu"] for r in bp], [r["cpu"] for r in hw]),
    )
    step = Row(
        section,
        "steady-state step (epochs 2+, wall)",
        median([r["step_ms"] for r in bp]),
        median([r["step_ms"] for r in hw]),
        "ms",
        pair_ratio=paired([r["step_ms"] for r in bp], [r["step_ms"] for r in hw]),
    )
    rss_bp, rss_hw = median([r["rss_mb"] for r in bp]), median([r["rss_mb"] for r in hw])
    rss = Row(section, "peak RSS", rss_bp, rss_hw, "MB", note=f"+{rss_bp - rss_hw:.0f} MB")
    return [wall, cpu, step, rss]


def inprocess_steady(
    settings: Settings,
    section: str,
    model: str,
    config: Path,
    data: Path,
    steps_per_epoch: int,
    reps: int,
    device: str,
) -> Row:
    """Steady-state step time in one process: pairs of 2-epoch runs, the second epoch timed.

    Each bptrain run is paired with the hand-written run right after (or before) it, and the
    ratio is the median of the per-pair ratios: on a shared machine the load drifts over
    seconds, and a pair of runs a second apart sees nearly the same load.
    """

    import bench_handwritten
    from rich.console import Console

    from bptrain.config import load_config
    from bptrain.train import fit

    def second_epoch_ms(metrics: Path) -> float:
        first, second = (r["time"] for r in epoch_records(metrics)[:2])
        return (second - first) / steps_per_epoch * 1000

    def bptrain(rep: int) -> float:
        overrides = ["trainer.max_epochs=2", f"trainer.device={device}", "logging.progress=plain"]
        cfg = load_config(config, [*overrides, f"logging.name={model}-inproc"])
        with contextlib.redirect_stdout(io.StringIO()):
            summary = fit(cfg, Console(file=io.StringIO()))
        return second_epoch_ms(Path(summary["run_dir"]) / "metrics.jsonl")

    def handwritten(rep: int) -> float:
        out = settings.work / f"hw-{model}-inproc"
        argv = [f"--data={data}", f"--model={model}", "--epochs=2", f"--device={device}"]
        with contextlib.redirect_stdout(io.StringIO()):
            bench_handwritten.main([*argv, "--tensorboard", f"--out={out}"])
        return second_epoch_ms(out / "metrics.jsonl")

    runs = alternate(reps, {"bptrain": bptrain, "handwritten": handwritten})
    pairs = [a / b for a, b in zip(runs["bptrain"], runs["handwritten"], strict=True)]
    return Row(
        section,
        f"steady-state step (in-process, {reps} pairs)",
        median(runs["bptrain"]),
        median(runs["handwritten"]),
        "ms",
        pair_ratio=median(pairs),
        note=f"median of per-pair ratios; pairs range {min(pairs):.2f}-{max(pairs):.2f}",
    )


def overhead(settings: Settings, config: Path, data: Path, epochs: int, device: str) -> list[Row]:
    """The MLP's steady-state step in one process (pairs of 2-epoch runs): finer than the budget
    section's whole processes, the same budget (<= 1.05)."""
    steady = inprocess_steady(
        settings, "overhead-bound MLP", "mlp", config, data, 250, settings.pick(10, 4), device
    )
    steady.budget, steady.ok = "<= 1.05", steady.ratio is not None and steady.ratio <= 1.05
    return [steady]
