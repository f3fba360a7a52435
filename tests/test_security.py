"""Hostile files are refused without side effects: pickles that run code, YAML with Python tags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from bptrain.cli import app


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


class Payload:
    """Unpickling this runs `touch MARKER` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint-looking file whose unpickling creates a marker file, and that marker's path."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "optimizer": Payload(marker)}, path)
    return path, marker


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {"source": "moons", "n_samples": 100},
                "model": {"hidden": [8]},
                "trainer": {"max_epochs": 1},
                "logging": {
                    "run_dir": str(tmp_path / "runs"),
                    "tensorboard": False,
                    "progress": "off",
                },
            }
        )
    )
    return path


def test_the_payload_is_real(evil):
    """Guard against a vacuous test: full unpickling of the file does run the payload."""
    path, marker = evil
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
    assert marker.exists()


@pytest.mark.parametrize("how", ["eval", "resume", "init_from"])
def test_malicious_checkpoint_is_refused_and_never_runs(evil, config, how):
    path, marker = evil
    args = {
        "eval": ["eval", str(config), "--checkpoint", str(path)],
        "resume": ["fit", str(config), "--resume", str(path)],
        "init_from": ["fit", str(config), f"model.init_from={path}"],
    }[how]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "refusing to load" in flat(result.output) and "posix.system" in flat(result.output)
    assert "Traceback" not in result.output
    assert not marker.exists()


def test_malicious_last_pt_in_a_run_directory_is_refused_by_resume_auto(evil, config, tmp_path):
    path, marker = evil
    target = tmp_path / "runs" / "tiny" / "20990101-000000" / "checkpoints" / "last.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())
    result = CliRunner().invoke(app, ["fit", str(config), "--resume", "auto"])
    assert result.exit_code == 2 and "refusing to load" in result.output
    assert not marker.exists()


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    config = tmp_path / "evil.yaml"
    config.write_text(
        f"seed: !!python/object/apply:os.system ['touch {marker}']\ndata: {{source: moons}}\n"
    )
    for args in (["config", "validate", str(config)], ["fit", str(config)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "line 1" in flat(result.output) and "python/object" in flat(result.output)
        assert "Traceback" not in result.output
    assert not marker.exists()
    # and the override path is as safe as the file
    result = CliRunner().invoke(
        app,
        [
            "config",
            "validate",
            str(config).replace("evil", "x"),
            f"seed=!!python/object/apply:os.system ['touch {marker}']",
        ],
    )
    assert result.exit_code == 2 and not marker.exists()


def test_safetensors_export_and_eval_roundtrip(config, tmp_path):
    """eval reads last.pt, best.pt and the .safetensors files alike (the same weights give the same numbers)."""
    assert CliRunner().invoke(app, ["fit", str(config)]).exit_code == 0
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    results = {}
    for name in ("last.pt", "best.pt", "last.safetensors", "best.safetensors"):
        out = CliRunner().invoke(
            app, ["eval", str(config), "--checkpoint", str(run / "checkpoints" / name), "--json"]
        )
        assert out.exit_code == 0, out.output
        results[name] = out.stdout
    # one epoch: best == last
    import json

    losses = {json.loads(v)["val/loss"] for v in results.values()}
    assert len(losses) == 1
