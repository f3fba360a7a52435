"""Section ``startup``: the CLI's start-up time (``bptrain --help``, ``config validate``) next to
``python -c 'import torch'``."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.common import Row, Settings, alternate, bptrain_command, median, run_process


def startup(settings: Settings, config: Path) -> list[Row]:
    bptrain = bptrain_command()
    commands = {
        "python": [sys.executable, "-c", "pass"],
        "torch": [sys.executable, "-c", "import torch"],
        "help": [*bptrain, "--help"],
        "fit_help": [*bptrain, "fit", "--help"],
        "validate": [*bptrain, "config", "validate", str(config)],
    }
    runs = alternate(
        settings.pick(10, 3),
        {k: (lambda rep, c=c: run_process(c, settings)["wall"]) for k, c in commands.items()},
    )
    s = {k: median(v) for k, v in runs.items()}
    return [
        Row(
            "start-up",
            "bptrain --help",
            s["help"],
            budget="< 0.3 s",
            ok=s["help"] < 0.3,
            unit="s",
            note=f"python -c pass: {s['python']:.3f} s",
        ),
        Row("start-up", "bptrain fit --help", s["fit_help"], unit="s"),
        Row(
            "start-up",
            "bptrain config validate",
            s["validate"],
            unit="s",
            note="imports pydantic and yaml, never torch",
        ),
        Row("start-up", "python -c 'import torch' (for scale)", s["torch"], unit="s"),
    ]
