"""The console fits the terminal: `fit` under a real pseudo-terminal at 60, 80 and 160 columns."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time

import pytest

from bptrain.progress import ConsoleProgress, StepRate, fit_line, wrap_fields

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def run_in_terminal(args: list[str], columns: int, cwd, timeout: float = 300) -> str:
    """Run a command with a pseudo-terminal of `columns` x 40 as its stdout/stderr; return what it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "CI", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=max(deadline - time.monotonic(), 1))
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode("utf-8", errors="replace")


def screen_lines(output: str) -> list[str]:
    """Every line as drawn: split at newlines, carriage returns and cursor moves; escapes removed."""
    pieces = re.split(r"\r\n|\n|\r|\x1b\[\d*[ABEFGH]|\x1b\[2K", output)
    return [ANSI.sub("", piece) for piece in pieces if ANSI.sub("", piece).strip()]


@pytest.mark.parametrize("columns", [60, 80, 160])
def test_fit_output_fits_the_terminal(write_config, tmp_path, columns):
    config = write_config(
        {
            "data": {"n_samples": 600},
            "trainer": {"max_epochs": 3},
            "logging": {"progress": "auto", "log_every_n_steps": 3},
        }
    )
    out = run_in_terminal([sys.executable, "-m", "bptrain", "fit", str(config)], columns, tmp_path)
    lines = screen_lines(out)
    too_wide = [
        line
        for line in lines
        if len(line) > columns and str(tmp_path) not in line  # a path cannot be shortened
    ]
    assert not too_wide, "\n".join(too_wide)
    live = [line for line in lines if re.search(r"\d+/45 \d:\d\d:\d\d eta \d:\d\d:\d\d", line)]
    assert live, "\n".join(lines)
    final = live[-1]
    assert "45/45" in final  # the counter, elapsed and ETA are whole, never cut
    if columns >= 80:
        assert "steps/s" in final and "loss=" in final
    if columns >= 160:
        assert "gnorm=" in final and "━" in final
    epochs = [line for line in lines if line.startswith("epoch ") and "(step" in line]
    assert len(epochs) >= 3  # one per epoch: wrapped onto continuation lines, not cut
    assert "val/acc=" in out.replace("\r", "")


def test_live_line_keeps_counter_time_and_eta_and_drops_metrics_first():
    fields = ["loss=0.123", "lr=0.003", "gnorm=1.41"]
    args = ("epoch 3/20", " 170/340", "0:01:02", "0:01:00", "47.1 steps/s", 0.5, fields)
    wide = fit_line(160, *args)
    assert wide.startswith("epoch 3/20 ━") and all(f in wide for f in fields)
    eighty = fit_line(80, *args)
    assert len(eighty) <= 80 and " 170/340 0:01:02 eta 0:01:00 47.1 steps/s loss=0.123" in eighty
    sixty = fit_line(60, *args)
    assert len(sixty) <= 60 and "170/340 0:01:02 eta 0:01:00" in sixty and "gnorm" not in sixty
    assert fit_line(30, *args) == " 170/340 0:01:02 eta 0:01:00"


def test_steps_per_second_is_a_moving_average():
    rate = StepRate(window=10.0)
    for i in range(100):  # slow start (compilation, warm-up): 1 step/s for 100 s...
        rate.add(i, now=float(i))
    for i in range(1, 501):  # ...then 50 steps/s for 10 s
        rate.add(100 + i, now=100 + i / 50)
    assert rate.rate() == pytest.approx(50, rel=0.1)  # a whole-run average would say 5


def test_epoch_lines_wrap_metrics_onto_continuation_lines():
    fields = [f"val/metric_{i}=0.{i}234" for i in range(8)]
    text = wrap_fields("epoch 12 (step 204):", fields, 60)
    lines = text.splitlines()
    assert len(lines) > 1 and all(len(line) <= 60 for line in lines)
    assert lines[1].startswith("    val/metric_")
    assert " ".join(text.split()) == " ".join(["epoch 12 (step 204):", *fields])


def test_validation_shows_its_own_progress():
    from rich.console import Console

    progress = ConsoleProgress(Console(width=80), "off", total_steps=100, max_epochs=5)
    progress.step(40, 2, {"train/loss": 0.5})
    progress.validation(12, 400)
    assert "validating 12/400" in progress.line(80)
    progress.validation(400, 400)
    assert "validating" not in progress.line(80) and "loss=0.5" in progress.line(80)
