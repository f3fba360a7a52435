"""The CLI end to end: run-directory contract, eval JSON, config helpers, and exit codes for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from tests.conftest import only_run_dir, read_jsonl


def test_help_does_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        from bptrain.cli import app
        for argv in (["--help"], ["fit", "--help"], ["grad-inspect", "--help"], ["config", "--help"]):
            try:
                app(argv)
            except SystemExit as exit:
                assert exit.code == 0, (argv, exit.code)
        print(sorted(m for m in ("torch", "numpy", "tensorboard") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_fit_writes_the_run_directory_contract(write_config, cli, tmp_path):
    path = write_config({"logging": {"tensorboard": True}, "data": {"test_fraction": 0.2}})
    result = cli("fit", path)
    assert result.exit_code == 0, result.output
    run = only_run_dir(tmp_path / "runs")
    assert str(run) in result.output  # the run directory is printed
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tb"} <= {
        p.name for p in run.iterdir()
    }
    assert list((run / "tb").glob("events.out.tfevents.*"))

    lines = read_jsonl(run / "metrics.jsonl")
    steps = [r for r in lines if r["type"] == "step"]
    epochs = [r for r in lines if r["type"] == "epoch"]
    assert len(epochs) == 2
    assert {"epoch", "step", "train/loss", "val/loss", "val/acc"} <= set(epochs[0])
    assert steps and {"step", "train/loss", "lr", "grad_norm"} <= set(steps[0])
    assert all(r["step"] % 2 == 0 for r in steps)  # log_every_n_steps: 2

    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == epochs[-1]["step"]
    assert summary["final"]["val/acc"] == epochs[-1]["val/acc"]
    assert summary["best"]["epoch"] in (1, 2)
    assert set(summary["test"]) == {"test/loss", "test/acc"}
    assert summary["wall_time_s"] > 0

    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert set(state["model"]) == {
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
        "net.4.weight",
        "net.4.bias",
    }


def test_eval_json_prints_only_json_matching_the_run(write_config, cli, tmp_path):
    path = write_config()
    assert cli("fit", path).exit_code == 0
    run = only_run_dir(tmp_path / "runs")
    result = cli("eval", path, "--checkpoint", run / "checkpoints" / "last.pt", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)  # stdout is exactly one JSON object
    final = json.loads((run / "summary.json").read_text())["final"]
    assert metrics["split"] == "val"
    assert metrics["val/loss"] == final["val/loss"] and metrics["val/acc"] == final["val/acc"]

    no_test = cli("eval", path, "--checkpoint", run / "checkpoints" / "last.pt", "--split", "test")
    assert no_test.exit_code == 2 and "no test split" in no_test.output


def test_config_show_validate_schema(write_config, cli):
    path = write_config()
    shown = cli("config", "show", path, "optimizer.lr=3e-4")
    assert (
        shown.exit_code == 0
        and "lr: 0.0003" in shown.stdout
        and "accumulate_grad_batches: 1" in shown.stdout
    )
    assert cli("config", "validate", path).exit_code == 0
    schema = cli("config", "schema")
    assert json.loads(schema.stdout)["title"] == "Config"


def _assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_bad_config_exits_2_with_message(write_config, cli):
    _assert_user_error(
        cli("fit", write_config(), "trainer.max_epochz=3"),
        "trainer.max_epochz",
        "Did you mean 'max_epochs'?",
    )
    _assert_user_error(
        cli("config", "validate", write_config(text="data: {source: moons, noise: x}\n")),
        "line 1",
        "data.noise",
    )
    _assert_user_error(cli("fit", "does-not-exist.yaml"), "config file not found")


def test_missing_data_file_and_npz_without_arrays(write_config, cli, tmp_path):
    runs = tmp_path / "runs"
    missing = write_config(
        text=f"data: {{source: npz, path: nope.npz}}\nlogging: {{run_dir: {runs}}}\n", name="c1"
    )
    _assert_user_error(cli("fit", missing), "data.path: file not found: nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, inputs=np.zeros((4, 2)), y=np.zeros(4))
    path = write_config(
        text=f"data: {{source: npz, path: {bad}}}\nlogging: {{run_dir: {runs}}}\n", name="c2"
    )
    _assert_user_error(cli("fit", path), "missing array(s) x", "found inputs, y")


def test_class_path_errors(write_config, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynet.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Wrong(nn.Module):
                def __init__(self, width: int = 8):
                    super().__init__()
                    self.body = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 3))

                def forward(self, x):
                    return self.body(x)
            """
        )
    )
    base = {"data": {"source": "spirals"}}
    _assert_user_error(
        cli("fit", write_config({**base, "=model": {"class_path": "nosuch.Net"}}, name="a")),
        "cannot import module 'nosuch'",
    )
    _assert_user_error(
        cli("fit", write_config({**base, "=model": {"class_path": "mynet.Wrng"}}, name="b")),
        "has no class 'Wrng'",
        "Did you mean 'Wrong'?",
    )
    _assert_user_error(
        cli("fit", write_config({**base, "=model": {"class_path": "mynet.Wrong"}}, name="c")),
        "does not fit the data",
        "layer 'body.0'",
        "(2, 2)",
    )
    _assert_user_error(
        cli(
            "fit",
            write_config(
                {**base, "=model": {"class_path": "mynet.Wrong", "init_args": {"depth": 3}}},
                name="d",
            ),
        ),
        "init_args do not fit",
    )


def test_training_failure_exits_1(write_config, cli):
    path = write_config(
        {
            "optimizer": {"name": "sgd", "lr": 1e30},
            "data": {"source": "sine"},
            "model": {"init": "default"},
        }
    )
    result = cli("fit", path)
    assert result.exit_code == 1, result.output
    assert "training failed" in result.output and "lower optimizer.lr" in result.output


def test_module_entry_point_runs(write_config):
    path = write_config()
    done = subprocess.run(
        [sys.executable, "-m", "bptrain", "config", "validate", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "valid" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "bptrain", "fit", str(path), "optimizer.lr=abc"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "optimizer.lr" in bad.stderr
    assert Path(path).exists()
