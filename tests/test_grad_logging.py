"""`fit` logs per-layer gradient flow to TensorBoard at log steps (logging.grad_norms)."""

from __future__ import annotations

import math

import pytest
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bptrain.config import load_config
from bptrain.train import fit
from tests.conftest import only_run_dir, read_jsonl

QUIET = Console(file=open("/dev/null", "w"))  # noqa: SIM115


def _scalars(run) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_per_layer_norms_update_ratios_and_clipping_reach_tensorboard(write_config, tmp_path):
    cfg = load_config(
        write_config({"logging": {"tensorboard": True, "log_every_n_steps": 3}}),
        ["trainer.grad_clip={max_norm: 0.05}", "trainer.max_steps=9"],
    )
    fit(cfg, QUIET)
    run = only_run_dir(tmp_path / "runs")
    scalars = _scalars(run)
    layers = ["net.0", "net.2", "net.4"]
    for layer in layers:
        assert set(scalars[f"grad_norm/layer/{layer}"]) == {3, 6, 9}
        assert all(0 < r < 1 for r in scalars[f"update_ratio/layer/{layer}"].values())
        assert set(scalars[f"nonfinite_grads/layer/{layer}"].values()) == {0.0}
    for line in (r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "step"):
        # the layers' norms combine to the logged total, which is the norm before clipping
        total = math.sqrt(
            sum(scalars[f"grad_norm/layer/{layer}"][line["step"]] ** 2 for layer in layers)
        )
        assert total == pytest.approx(line["grad_norm"], rel=1e-4)
        assert scalars["grad_norm_clipped"][line["step"]] == pytest.approx(
            min(line["grad_norm"], 0.05)
        )
        assert scalars["lr"][line["step"]] == pytest.approx(line["lr"])


def test_grad_norm_logging_can_be_turned_off(write_config, tmp_path):
    cfg = load_config(
        write_config({"logging": {"tensorboard": True, "grad_norms": False}}),
        ["trainer.max_steps=4"],
    )
    fit(cfg, QUIET)
    assert not [
        t for t in _scalars(only_run_dir(tmp_path / "runs")) if t.startswith("grad_norm/layer/")
    ]


def test_histograms_of_weights_gradients_and_activations(write_config, tmp_path):
    cfg = load_config(
        write_config(
            {
                "logging": {
                    "tensorboard": True,
                    "log_every_n_steps": 2,
                    "histograms": True,
                    "histogram_every_n_steps": 4,
                }
            }
        ),
        ["trainer.max_steps=8"],
    )
    fit(cfg, QUIET)
    events = EventAccumulator(
        str(only_run_dir(tmp_path / "runs") / "tb"), size_guidance={"histograms": 0}
    )
    events.Reload()
    tags = events.Tags()["histograms"]
    assert {"weights/net.0.weight", "gradients/net.0.weight", "activations/net.1"} <= set(tags)
    assert [e.step for e in events.Histograms("gradients/net.0.weight")] == [4, 8]
    weights = events.Histograms("weights/net.4.bias")[0].histogram_value
    assert weights.num == 3  # every value of the 3-class output bias
