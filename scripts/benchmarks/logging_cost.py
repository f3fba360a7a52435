"""Section ``logging``: what metrics.jsonl, TensorBoard, per-layer gradient norms and the
console progress cost a whole ``fit``."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Row, Settings, alternate, epoch_records, median, paired
from benchmarks.workloads import mlp_config


def logging_cost(settings: Settings, data: Path) -> list[Row]:
    """Steady-state step time of in-process fits that differ only in what they log.

    Every variant trains 2 epochs and the second is timed; each repetition runs all variants
    back to back and the ratios compare variants of the same repetition.
    """

    from rich.console import Console

    from bptrain.config import load_config
    from bptrain.train import fit

    config = mlp_config(settings.work, data, 2, name="logging")
    never = "logging.log_every_n_steps=1000000000"
    off = "logging.tensorboard=false"
    variants = {
        "never": [never, off],
        "default": [off],
        "every": ["logging.log_every_n_steps=1", off],
        "every_no_layers": ["logging.log_every_n_steps=1", "logging.grad_norms=false", off],
        "tb_on": ["logging.tensorboard=true"],
        "tb_every": ["logging.log_every_n_steps=1", "logging.tensorboard=true"],
    }

    def runner(overrides: list[str]) -> Callable[[int], float]:
        def run(rep: int) -> float:
            cfg = load_config(config, [*overrides, "trainer.device=cpu", "logging.progress='off'"])
            with contextlib.redirect_stdout(io.StringIO()):
                summary = fit(cfg, Console(file=io.StringIO()))
            first, second = (
                r["time"] for r in epoch_records(Path(summary["run_dir"]) / "metrics.jsonl")
            )
            return (second - first) / 250 * 1000

        return run

    runs = alternate(settings.pick(8, 3), {k: runner(v) for k, v in variants.items()})

    def row(name: str, key: str, base: str, limit: float | None = None, budget: str = "") -> Row:
        ratio = paired(runs[key], runs[base])
        ok = None if limit is None else ratio <= limit
        budget = budget or ("" if limit is None else f"<= {limit:.2f}")
        return Row(
            "logging",
            name,
            median(runs[key]),
            median(runs[base]),
            "ms",
            budget,
            ok,
            pair_ratio=ratio,
        )

    return [
        row("fit, end to end: every step vs never", "every", "never"),
        row("fit, end to end: every step, logging.grad_norms=false", "every_no_layers", "never"),
        row("fit, end to end: default interval (50) vs never", "default", "never"),
        row("fit, end to end: TensorBoard on vs off (default interval)", "tb_on", "default"),
        row("fit, end to end: TensorBoard on, every step vs never", "tb_every", "never"),
    ]
