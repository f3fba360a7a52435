"""Shared by the checkpoint/resume/fault tests: a tiny config, an in-process fit, and readers for run files."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bptrain.checkpoint import load_checkpoint
from bptrain.config import Config, validate_config

TINY: dict[str, Any] = {
    "seed": 3,
    "data": {"source": "moons", "n_samples": 200, "batch_size": 16, "val_fraction": 0.2},
    "model": {"name": "mlp", "hidden": [16], "dropout": 0.2},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "scheduler": {"name": "warmup_cosine", "warmup_steps": 5},
    "trainer": {"max_epochs": 3},
    "logging": {"tensorboard": False, "progress": "off", "log_every_n_steps": 1, "name": "tiny"},
}


def tiny_config(tmp_path: Path, **sections: Any) -> Config:
    """TINY with sections merged key by key (e.g. trainer={"precision": "fp16"}); a new variant name replaces the section."""
    data = json.loads(json.dumps(TINY))
    for section, values in sections.items():
        same_variant = not isinstance(values, dict) or (
            "class_path" not in values
            and values.get("name") in (None, (data.get(section) or {}).get("name"))
        )
        if isinstance(values, dict) and isinstance(data.get(section), dict) and same_variant:
            data[section].update(values)
        else:
            data[section] = values
    data["logging"]["run_dir"] = str(tmp_path / "runs")
    return validate_config(data)


def run_fit(cfg: Config, resume: str | None = None) -> dict[str, Any]:
    from bptrain.train import fit

    return fit(cfg, Console(file=io.StringIO(), width=200), resume=resume)


def signal_at_step(monkeypatch: Any, step: int, signum: int = signal.SIGUSR1) -> None:
    """Send a real signal to this process right after optimizer step `step` (counted from this call)."""
    import bptrain.train as train

    real = train.train_step
    calls = {"n": 0}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(train, "train_step", wrapped)


def run_dirs(tmp_path: Path, name: str = "tiny") -> list[Path]:
    return sorted(p for p in (tmp_path / "runs" / name).iterdir() if p.is_dir())


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def metric_lines(run_dir: Path, kinds: tuple[str, ...] = ("step", "epoch", "test")) -> list[dict]:
    """metrics.jsonl records of the given kinds, without wall-clock fields."""
    lines = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["type"] in kinds:
            record.pop("time", None)
            lines.append(record)
    return lines
