"""`bptrain lr-find`: exponential LR ramp, smoothed loss, stop on divergence, model restored."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bptrain.cli import app
from bptrain.config import load_config
from bptrain.data import build_data
from bptrain.losses import build_objective
from bptrain.lr_find import RangeTest, _suggest, ascii_plot, lr_schedule, range_test, sweep_lrs
from bptrain.models import build_model
from bptrain.optim import build_optimizer
from bptrain.runtime import Precision

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def quickstart(tmp_path, *overrides):
    return load_config(
        QUICKSTART, [f"logging.run_dir={tmp_path}", "logging.tensorboard=false", *overrides]
    )


def test_schedule_is_exponential():
    lrs = lr_schedule(1e-6, 1.0, 7)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in itertools.pairwise(lrs)]
    assert all(r == pytest.approx(10.0) for r in ratios)


def test_suggestion_is_a_tenth_of_the_minimum_and_steepest_is_before_it():
    result = RangeTest(lrs=[1e-4, 1e-3, 1e-2, 1e-1, 1.0], smoothed=[2.0, 1.9, 1.0, 0.5, 3.0])
    _suggest(result)
    assert result.min_loss_lr == 1e-1 and result.suggested_lr == pytest.approx(1e-2)
    assert result.steepest_lr == 1e-3  # the drop 1.9 -> 1.0 is the steepest


def test_range_test_on_the_quickstart_stops_at_divergence(tmp_path):
    result = range_test(quickstart(tmp_path), start_lr=1e-4, end_lr=100.0, steps=60)
    assert "diverged" in result.stopped or "loss became" in result.stopped
    assert len(result.lrs) < 60
    assert 1e-4 < result.suggested_lr < 1.0
    assert min(result.smoothed) < result.smoothed[0]  # the loss did fall before it blew up


def test_model_weights_are_restored(tmp_path):
    cfg = quickstart(tmp_path)
    data = build_data(cfg.data, cfg.seed, torch.device("cpu"))
    objective = build_objective(cfg.loss, data.spec)
    model = build_model(cfg.model, data.spec, objective.name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(cfg.optimizer, model)
    precision = Precision.create("32", torch.device("cpu"))
    result = sweep_lrs(
        model, data.train, objective, optimizer, precision, cfg, lr_schedule(1e-4, 1e-1, 30)
    )
    assert len(result.losses) == 30
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ascii_plot_draws_the_curve():
    text = ascii_plot([1e-5, 1e-4, 1e-3, 1e-2], [2.0, 1.5, 1.0, math.inf], width=20, height=5)
    assert text.count("*") == 3 and "1e-05" in text


def test_cli_prints_a_suggestion_and_writes_the_curve(tmp_path):
    out = tmp_path / "curve"
    result = CliRunner().invoke(
        app,
        [
            "lr-find",
            str(QUICKSTART),
            f"logging.run_dir={tmp_path}",
            "--steps",
            "60",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "suggested lr" in result.output
    curve = json.loads((out / "lr_find.json").read_text())
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    assert len(rows) == len(curve["lrs"]) > 10
    assert curve["suggested_lr"] is not None


def test_cli_png_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="the PNG needs the optional 'plot' extra")
    png = tmp_path / "lr.png"
    result = CliRunner().invoke(
        app,
        [
            "lr-find",
            str(QUICKSTART),
            f"logging.run_dir={tmp_path}",
            "--steps",
            "30",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bad_range_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(
        app, ["lr-find", str(QUICKSTART), "--start-lr", "1", "--end-lr", "0.1"]
    )
    assert result.exit_code == 2
