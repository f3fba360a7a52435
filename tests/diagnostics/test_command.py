"""grad-inspect end to end: config -> report, JSON, sweep table, exit codes, user errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from bptrain.diagnostics.command import run_grad_inspect, sweep_points
from bptrain.errors import EXIT_DIAGNOSTIC_FLAGS, UserError

CONFIG = """\
seed: 0
data: {source: blobs, n_samples: 400, n_features: 8, n_classes: 3, batch_size: 64, normalize: true}
model: {name: mlp, hidden: [32, 32], activation: relu, init: kaiming_normal}
optimizer: {name: sgd, lr: 0.01}
"""
DEEP_SIGMOID = [
    "model.hidden=[32,32,32,32,32,32,32,32,32,32,32,32]",
    "model.activation=sigmoid",
    "model.init=xavier_normal",
]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "blobs.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def _run(config: Path, overrides: list[str] | None = None, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    options = dict(
        checkpoint=None,
        batches=2,
        json_path=None,
        plot_path=None,
        fail_on=None,
        check_gradients=False,
        sweep=[],
        noise=False,
        curvature=False,
    )
    options.update(kwargs)
    code = run_grad_inspect(
        config, overrides or [], console=Console(file=out, width=200), **options
    )
    return code, out.getvalue()


def test_healthy_mlp_report_and_json(config: Path, tmp_path: Path) -> None:
    json_path = tmp_path / "report.json"
    code, text = _run(config, json_path=json_path, fail_on="error", noise=True, curvature=True)
    assert code == 0, text
    data = json.loads(json_path.read_text())
    assert [layer["name"] for layer in data["layers"]] == ["net.0", "net.2", "net.4"]
    assert data["batches"] == 2 and data["batch_size"] == 64
    assert {"norm_test", "inner_product_test", "orthogonality_test", "gsnr"} <= set(
        data["gradient_tests"]
    )
    assert data["hessian_max_eigenvalue"] > 0
    assert all(layer["update_ratio"] > 0 for layer in data["layers"])
    assert "verdict:" in text


def test_deep_sigmoid_fails_on_error_with_exit_3(config: Path) -> None:
    code, text = _run(config, DEEP_SIGMOID, fail_on="error")
    assert code == EXIT_DIAGNOSTIC_FLAGS
    assert "vanishing" in text and "model.activation=relu" in text


def test_sweep_renders_side_by_side_and_writes_every_report(config: Path, tmp_path: Path) -> None:
    json_path = tmp_path / "sweep.json"
    code, text = _run(
        config,
        [
            DEEP_SIGMOID[0],
            "model.activation=sigmoid,relu",
            "model.init=xavier_normal,kaiming_normal",
        ],
        json_path=json_path,
    )
    assert code == 0
    data = json.loads(json_path.read_text())
    labels = [item["label"] for item in data["sweep"]]
    assert labels == [
        "activation=sigmoid init=xavier_normal",
        "activation=sigmoid init=kaiming_normal",
        "activation=relu init=xavier_normal",
        "activation=relu init=kaiming_normal",
    ]
    trend = {
        item["label"]: item["report"]["depth_trend"]["factor_per_layer"] for item in data["sweep"]
    }
    assert (
        trend["activation=sigmoid init=xavier_normal"]
        < trend["activation=relu init=kaiming_normal"]
    )
    assert "activation=relu init=kaiming_normal" in text and "factor/layer" in text


def test_arguments_with_several_values_are_axes_the_rest_overrides() -> None:
    overrides, points = sweep_points(
        ["model.hidden=[8,8],[16]", "optimizer.lr=0.1", "model.hidden2=[8,8]"], []
    )
    assert overrides == ["optimizer.lr=0.1", "model.hidden2=[8,8]"]
    assert points[1] == ("hidden=[16]", ["model.hidden=[16]"])
    # the deprecated --sweep axes join the grid after the argument axes; labels keep dotted values
    _, points = sweep_points(["optimizer.lr=0.1,0.01"], ["model.init=xavier_normal"])
    assert [label for label, _ in points] == [
        "lr=0.1 init=xavier_normal",
        "lr=0.01 init=xavier_normal",
    ]


@pytest.mark.parametrize("bad", [["model.activation"], ["=relu"], ["model.activation=relu,,tanh"]])
def test_malformed_sweep_is_a_user_error(config: Path, bad: list[str]) -> None:
    with pytest.raises(UserError, match="--sweep"):
        _run(config, sweep=bad)


def test_missing_checkpoint_and_bad_options_are_user_errors(config: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint not found"):
        _run(config, checkpoint=tmp_path / "missing.pt")
    with pytest.raises(UserError, match="batches"):
        _run(config, batches=0)
    with pytest.raises(UserError, match="fail-on"):
        _run(config, fail_on="info")


def test_checkpoint_weights_are_inspected(config: Path, tmp_path: Path) -> None:
    import torch

    from bptrain.config import load_config
    from bptrain.data import build_data
    from bptrain.losses import build_objective
    from bptrain.models import build_model

    cfg = load_config(config, [])
    data = build_data(cfg.data, seed=0, device=torch.device("cpu"))
    model = build_model(cfg.model, data.spec, build_objective(cfg.loss, data.spec).name)
    with torch.no_grad():
        model.get_submodule("net.2").bias.fill_(-100.0)
    torch.save({"model": model.state_dict()}, tmp_path / "last.pt")
    json_path = tmp_path / "ckpt.json"
    code, _ = _run(config, checkpoint=tmp_path / "last.pt", json_path=json_path, fail_on="error")
    assert code == EXIT_DIAGNOSTIC_FLAGS
    layers = {x["name"]: x for x in json.loads(json_path.read_text())["layers"]}
    assert any(f["name"] == "dead" for f in layers["net.2"]["flags"])
