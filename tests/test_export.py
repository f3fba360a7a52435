"""bptrain export: every format is written, loaded back the way a user would, and equals the eager model."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bptrain import load_run
from tests.conftest import only_run_dir

TINY_MODELS = {
    "mlp": {
        "=data": {"source": "blobs", "n_samples": 96, "n_features": 3, "normalize": True,
                  "batch_size": 32, "val_fraction": 0.25},
        "=model": {"name": "mlp", "hidden": [8], "norm": "batchnorm"},
    },
    "cnn": {
        "=data": {"source": "shapes", "n_samples": 64, "image_size": 8, "normalize": True,
                  "batch_size": 32, "val_fraction": 0.25},
        "=model": {"name": "cnn", "channels": [4, 8]},
    },
    "rnn": {
        "=data": {"source": "adding", "n_samples": 64, "length": 6, "batch_size": 32,
                  "val_fraction": 0.25},
        "=model": {"name": "rnn", "cell": "lstm", "hidden_size": 8},
    },
    "transformer": {
        "=data": {"source": "majority", "n_samples": 64, "length": 6, "vocab": 4,
                  "batch_size": 32, "val_fraction": 0.25},
        "=model": {"name": "transformer", "vocab_size": 4, "d_model": 8, "num_heads": 2,
                   "num_layers": 1, "dropout": 0.0},
    },
}  # fmt: skip


def _train(write_config, cli, tmp_path: Path, extra: dict, name: str) -> Path:
    result = cli("fit", write_config({**extra, "trainer": {"max_epochs": 1}}, name=name))
    assert result.exit_code == 0, result.output
    return only_run_dir(tmp_path / "runs")


@pytest.mark.parametrize("kind", list(TINY_MODELS))
def test_onnx_and_torch_export_equal_eager(kind, write_config, cli, tmp_path):
    run_dir = _train(write_config, cli, tmp_path, TINY_MODELS[kind], kind)
    loaded = load_run(run_dir)
    x_raw = _raw_inputs(loaded, 5)  # another batch size than the exporter traced or verified
    with torch.no_grad():
        eager = loaded.model(loaded.preprocessing.transform(x_raw)).numpy()

    result = cli("export", run_dir, "--format", "onnx", "--json", "--fold-preprocessing")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["max_abs_diff"] <= 1e-4
    import onnxruntime

    session = onnxruntime.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(
        None, {"input": x_raw.numpy()}
    )  # raw inputs: standardisation folded in
    np.testing.assert_allclose(onnx_out, eager, atol=1e-4, rtol=0)
    sidecar = json.loads(Path(report["preprocessing"]).read_text())
    assert sidecar["folded"] is (loaded.preprocessing.mean is not None)
    assert sidecar["spec"]["input_shape"] == list(x_raw.shape[1:])

    result = cli("export", run_dir, "--format", "torch.export", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["max_abs_diff"] <= 1e-4 and report["path"].endswith(".pt2")
    program = torch.export.load(report["path"])
    with torch.no_grad():  # not folded: it takes standardised inputs, as the JSON beside it says
        pt2_out = program.module()(loaded.preprocessing.transform(x_raw)).numpy()
    np.testing.assert_allclose(pt2_out, eager, atol=1e-4, rtol=0)
    sidecar = json.loads(Path(report["preprocessing"]).read_text())
    assert sidecar["folded"] is False


def _raw_inputs(loaded, n: int) -> torch.Tensor:
    prep = loaded.preprocessing
    generator = torch.Generator().manual_seed(1)
    if prep.integer_inputs:
        return torch.randint(
            0, prep.spec.token_range, (n, *prep.spec.input_shape), generator=generator
        )
    x = torch.randn((n, *prep.spec.input_shape), generator=generator)
    return x * prep.std + prep.mean if prep.mean is not None else x


def test_torchscript_and_safetensors_exports_verify(write_config, cli, tmp_path):
    run_dir = _train(write_config, cli, tmp_path, TINY_MODELS["mlp"], "mlp")
    for fmt, suffix in (("torchscript", ".ts.pt"), ("safetensors", ".safetensors")):
        out = tmp_path / f"model{suffix}"
        result = cli("export", run_dir, "--format", fmt, "--output", out, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["max_abs_diff"] <= 1e-4 and out.is_file()
        assert Path(f"{out}.preprocessing.json").is_file()


def test_a_model_that_cannot_export_names_the_module(write_config, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "branchy.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Gate(nn.Module):
                def forward(self, x):
                    if x.sum() > 0:  # data-dependent Python control flow: not traceable
                        return x * 2
                    return x

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Linear(2, 3)
                    self.gate = Gate()

                def forward(self, x):
                    return self.gate(self.body(x))
            """
        )
    )
    run_dir = _train(
        write_config, cli, tmp_path, {"=model": {"class_path": "branchy.Net"}}, "branchy"
    )
    result = cli("export", run_dir, "--format", "torch.export")
    assert result.exit_code == 2, result.output
    assert "module 'gate' (Gate)" in result.output


def test_export_of_a_run_without_checkpoint_says_its_status(cli, tmp_path):
    run_dir = tmp_path / "runs" / "x" / "20260101-000000"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("data: {source: moons}\n")
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"type": "event", "step": 3, "event": "interrupted", "signal": "SIGTERM"}) + "\n"
    )
    for command in ("export", "predict"):
        extra = (
            ("--input", tmp_path / "x.npz", "--output", tmp_path / "o.csv")
            if command == "predict"
            else ()
        )
        result = cli(command, run_dir, *extra)
        assert result.exit_code == 2, result.output
        assert "has no checkpoint" in result.output and "interrupted by SIGTERM" in result.output


@pytest.mark.parametrize("command", ["predict", "export", "summary"])
def test_help_of_the_after_training_commands_never_imports_torch(command):
    from tests.test_startup import imported_by

    code, loaded = imported_by(command, "--help")
    assert code == 0
    assert "torch" not in loaded and "numpy" not in loaded, loaded


def test_summary_json_rows_come_from_a_forward_pass(write_config, cli):
    config = write_config({"=model": {"name": "cnn", "channels": [4, 8]},
                           "=data": {"source": "shapes", "n_samples": 32, "image_size": 8}})  # fmt: skip
    result = cli("summary", config, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = {row["name"]: row for row in summary["rows"]}
    assert summary["input_shape"] == [4, 1, 8, 8] and summary["output_shape"] == [4, 4]
    assert rows["head"]["output_shape"] == [4, 4] and rows["head"]["type"] == "Linear"
    leaves = [
        r
        for r in summary["rows"]
        if not any(o["name"].startswith(r["name"] + ".") for o in summary["rows"])
    ]
    assert (
        sum(r["params"] for r in leaves) == summary["total_params"] == summary["trainable_params"]
    )
    text = cli("summary", config)
    assert text.exit_code == 0 and "output shape" in text.output and "head" in text.output
