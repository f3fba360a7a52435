"""Console progress that suits both a terminal of any width and a batch-job log.

On a terminal: one live status line, built for the terminal's width each time it
is drawn, so it never wraps or gets cut mid-number. What it keeps, in order of
priority: the epoch, the step counter, the elapsed time and the ETA; then the
speed; then a bar; then the latest metrics with short names, as many as fit
(``fit_line``). Otherwise (SLURM log, nohup, CI): one plain line every
``log_every_n_steps`` optimizer steps and one per epoch, never redraws that
flood a log file.

Steps/s is a moving average over the last ~10 seconds (``StepRate``), so it
shows the speed now rather than a whole-run average that climbs for minutes
after start-up and compilation. A long validation shows its own progress.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

SHORT_NAMES = {"train/loss": "loss", "grad_norm": "gnorm", "loss_scale": "scale"}
"""How the live line names metrics; epoch lines keep the full names."""


def format_metrics(metrics: dict[str, Any]) -> str:
    return " ".join(metric_fields(metrics))


def metric_fields(metrics: dict[str, Any], short: bool = False, digits: int = 4) -> list[str]:
    """``key=value`` per metric (the epoch number excluded), in the dict's order."""
    fields = []
    for key, value in metrics.items():
        if key == "epoch" or value is None:
            continue
        name = SHORT_NAMES.get(key, key) if short else key
        text = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
        fields.append(f"{name}={text}")
    return fields


def clock(seconds: float | None) -> str:
    """H:MM:SS (the hours grow as needed); ``-:--:--`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StepRate:
    """Optimizer steps per second over a sliding window of about `window` seconds."""

    def __init__(self, window: float = 10.0, samples: int = 40) -> None:
        self.every = window / samples
        self.points: deque[tuple[float, int]] = deque(maxlen=samples)
        self.latest: tuple[float, int] | None = None

    def add(self, step: int, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self.latest = (now, step)
        if not self.points or now - self.points[-1][0] >= self.every:
            self.points.append((now, step))

    def rate(self) -> float | None:
        if not self.points or self.latest is None:
            return None
        (t0, s0), (t1, s1) = self.points[0], self.latest
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


def fit_line(
    width: int,
    head: str,
    counter: str,
    elapsed: str,
    eta: str,
    rate: str,
    fraction: float,
    fields: list[str],
) -> str:
    """The live line for `width` columns.

    Always the step counter, elapsed time and ETA; then, while they fit, the epoch, the speed and
    the metrics (in order: later ones are dropped first); a bar takes what room is left.
    """
    core = f"{counter} {elapsed} eta {eta}"
    if len(head) + 1 + len(core) > width:
        return core[:width]
    parts, used = [core], len(head) + 1 + len(core)
    if rate and used + 1 + len(rate) <= width:
        parts.append(rate)
        used += 1 + len(rate)
    for field in fields:
        if used + 1 + len(field) > width:
            break
        parts.append(field)
        used += 1 + len(field)
    bar_size = min(width - used - 1, 30)
    if bar_size >= 6:
        done = min(round(fraction * bar_size), bar_size)
        parts.insert(0, "━" * done + "─" * (bar_size - done))
    return " ".join([head, *parts])


def wrap_fields(head: str, fields: list[str], width: int | None, indent: int = 4) -> str:
    """`head` then the fields, packed into lines of at most `width` (a field is never split)."""
    if width is None:
        return " ".join([head, *fields])
    lines, current = [], head
    for field in fields:
        if len(current) + 1 + len(field) <= width:
            current = f"{current} {field}"
        else:
            lines.append(current)
            current = " " * indent + field
    lines.append(current)
    return "\n".join(lines)


class _LiveLine:
    """A renderable that lays the status line out for the width it is given, each time it is drawn."""

    def __init__(self, progress: ConsoleProgress) -> None:
        self.progress = progress

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.text import Text

        yield Text(self.progress.line(options.max_width), no_wrap=True, overflow="crop")


class ConsoleProgress:
    def __init__(
        self, console: Console, mode: str, total_steps: int, max_epochs: int | None = None
    ) -> None:
        if mode == "auto":
            mode = "rich" if console.is_terminal else "plain"
        self.mode, self.console, self.total_steps = mode, console, total_steps
        self.max_epochs = max_epochs
        self.start = time.perf_counter()
        self.rate = StepRate()
        self.current_step, self.epoch, self.first_step = 0, 1, None
        self.fields: list[str] = []
        self.validating: tuple[int, int] | None = None
        self._last_plain = 0.0
        self.live = None
        if mode == "rich":
            # imported here: batch jobs (plain) never pay for rich.live
            from rich.live import Live

            self.live = Live(
                _LiveLine(self), console=console, refresh_per_second=4, transient=False
            )
            self.live.start()

    # ------------------------------------------------------------------ what the loop calls

    def step(self, step: int, epoch: int, metrics: dict[str, Any] | None = None) -> None:
        """Called every optimizer step (cheap) and with metrics at log steps."""
        if self.first_step is None:
            self.first_step = step - 1  # a resumed run's speed counts from where it resumed
        self.current_step, self.epoch = step, epoch
        self.rate.add(step)
        if metrics is not None:
            self.fields = metric_fields(metrics, short=True, digits=3)
            if self.mode == "plain":
                rate = self.rate.rate()
                print(
                    f"[train] epoch {self._epoch_text()} step {step}/{self.total_steps} "
                    f"{format_metrics(metrics)} "
                    f"({'-' if rate is None else f'{rate:.1f}'} steps/s, eta {clock(self._eta())})",
                    flush=True,
                )

    def validation(self, done: int, total: int) -> None:
        """Called after each validation batch: the live line shows it, a log gets a line every 30 s."""
        self.validating = (done, total) if done < total else None
        if self.mode == "plain" and done < total:
            now = time.perf_counter()
            if done == 1:  # the 30 s count from the start of this validation
                self._last_plain = now
            elif now - self._last_plain >= 30:
                self._last_plain = now
                print(f"[val] epoch {self._epoch_text()} batch {done}/{total}", flush=True)

    def epoch_end(self, epoch: int, step: int, metrics: dict[str, Any]) -> None:
        if self.mode == "off":
            return
        self.validating = None
        fields = metric_fields(metrics)
        if self.live is not None:
            text = wrap_fields(f"epoch {epoch} (step {step}):", fields, self.console.width)
            self.live.console.print(text, soft_wrap=True, markup=False, highlight=False)
        else:
            width = self.console.width if self.console.is_terminal else None
            print(wrap_fields(f"[epoch] epoch {epoch} (step {step}):", fields, width), flush=True)

    def message(self, text: str) -> None:
        if self.mode != "off":
            self.console.print(text)
            sys.stdout.flush()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # ------------------------------------------------------------------ the live line

    def _epoch_text(self) -> str:
        return f"{self.epoch}/{self.max_epochs}" if self.max_epochs else str(self.epoch)

    def _eta(self) -> float | None:
        rate = self.rate.rate()
        if not rate:
            return None
        return (self.total_steps - self.current_step) / rate

    def line(self, width: int) -> str:
        rate = self.rate.rate()
        width_steps = len(str(self.total_steps))
        counter = f"{self.current_step:>{width_steps}}/{self.total_steps}"
        fraction = self.current_step / self.total_steps if self.total_steps else 1.0
        fields = self.fields
        if self.validating is not None:
            done, total = self.validating
            fields = [f"validating {done}/{total}"]
        return fit_line(
            width,
            f"epoch {self._epoch_text()}",
            counter,
            clock(time.perf_counter() - self.start),
            clock(self._eta()) if self.current_step < self.total_steps else clock(0),
            "" if rate is None else f"{rate:.1f} steps/s",
            fraction,
            fields,
        )
