"""Console progress that suits both a terminal and a batch-job log.

On a terminal: a rich live bar. Otherwise (SLURM log, nohup, CI): one plain line
every ``log_every_n_steps`` optimizer steps and one per epoch, never redraws that
flood a log file.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if key == "epoch":
            continue
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif value is not None:
            parts.append(f"{key}={value}")
    return " ".join(parts)


class ConsoleProgress:
    def __init__(self, console: Console, mode: str, total_steps: int) -> None:
        if mode == "auto":
            mode = "rich" if console.is_terminal else "plain"
        self.mode, self.console, self.total_steps = mode, console, total_steps
        self.start = time.perf_counter()
        self.bar: Progress | None = None
        if mode == "rich":
            # imported here: batch jobs (plain) never pay for rich.progress and its live display
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total_steps, epoch=1, info="")
            self.bar.start()

    def step(self, step: int, epoch: int, metrics: dict[str, Any] | None = None) -> None:
        """Called every optimizer step (cheap) and with metrics at log steps."""
        if self.bar is not None:
            info = {"info": format_metrics(metrics)} if metrics else {}
            self.bar.update(self.task, completed=step, epoch=epoch, **info)
        elif self.mode == "plain" and metrics is not None:
            elapsed = time.perf_counter() - self.start
            rate = step / elapsed if elapsed > 0 else 0.0
            print(
                f"[train] epoch {epoch} step {step}/{self.total_steps} {format_metrics(metrics)} ({rate:.1f} steps/s)",
                flush=True,
            )

    def epoch_end(self, epoch: int, step: int, metrics: dict[str, Any]) -> None:
        if self.mode == "off":
            return
        line = f"epoch {epoch} (step {step}): {format_metrics(metrics)}"
        if self.bar is not None:
            self.bar.console.print(line)
        else:
            print(f"[epoch] {line}", flush=True)

    def message(self, text: str) -> None:
        if self.mode != "off":
            self.console.print(text)
            sys.stdout.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
