"""Shared test helpers: tiny configs written to tmp_path, and the CLI run in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bptrain.cli import app

TINY = {
    "seed": 0,
    "data": {"source": "spirals", "n_samples": 300, "batch_size": 32},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "trainer": {"max_epochs": 2},
    "logging": {"tensorboard": False, "progress": "off", "log_every_n_steps": 2},
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge `extra` into `base`; a key written as "=name" replaces that section instead of merging."""
    out = dict(base)
    for key, value in extra.items():
        if key.startswith("="):
            out[key[1:]] = value
            continue
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


@pytest.fixture
def write_config(tmp_path: Path):
    """write_config(extra=None, name="tiny", text=None) -> path of a YAML config whose runs go under tmp_path."""

    def write(
        extra: dict[str, Any] | None = None, name: str = "tiny", text: str | None = None
    ) -> Path:
        path = tmp_path / f"{name}.yaml"
        if text is None:
            data = deep_merge(TINY, {"logging": {"run_dir": str(tmp_path / "runs")}})
            data = deep_merge(data, extra or {})
            text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    return write


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def only_run_dir(root: Path) -> Path:
    runs = [p for p in root.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]
