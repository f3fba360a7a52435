"""The training loop's numerics: accumulation, AMP, clipping, schedules, reproducibility, L-BFGS."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from rich.console import Console
from torch import nn

from bptrain.config import load_config
from bptrain.data import DataSpec
from bptrain.losses import build_objective
from bptrain.models import build_model
from bptrain.optim import build_optimizer, param_groups, warmup_cosine_factor
from bptrain.runtime import Precision
from bptrain.train import fit, train_step
from tests.conftest import only_run_dir, read_jsonl

QUIET = Console(file=open("/dev/null", "w"))  # noqa: SIM115


def _setup(write_config, overrides=()):
    cfg = load_config(
        write_config({"model": {"dropout": 0.0}}),
        ["optimizer.name=sgd", "optimizer.lr=1.0", *overrides],
    )
    spec = DataSpec("classification", (2,), 3, ())
    objective = build_objective(cfg.loss, spec)
    torch.manual_seed(0)
    model = build_model(cfg.model, spec, objective.name)
    return cfg, objective, model


@pytest.mark.parametrize("sizes", [(8, 8, 8, 8), (8, 8, 5)])
def test_accumulation_equals_one_large_batch(write_config, sizes):
    """k micro-batches (the last one possibly shorter) give the gradient of one batch of all their samples."""
    cfg, objective, model = _setup(write_config)
    torch.manual_seed(1)
    x, y = torch.randn(sum(sizes), 2), torch.randint(0, 3, (sum(sizes),))
    micro = list(zip(x.split(list(sizes)), y.split(list(sizes)), strict=True))
    big = copy.deepcopy(model)
    precision = Precision.create("32", torch.device("cpu"))
    opt_micro, opt_big = build_optimizer(cfg.optimizer, model), build_optimizer(cfg.optimizer, big)
    clip = cfg.trainer.grad_clip
    loss_micro, n_micro, norm_micro, *_ = train_step(
        model, micro, objective, opt_micro, precision, clip, measure_grad_norm=True
    )
    loss_big, n_big, norm_big, *_ = train_step(
        big, [(x, y)], objective, opt_big, precision, clip, measure_grad_norm=True
    )
    assert n_micro == n_big == sum(sizes)
    assert loss_micro.item() == pytest.approx(loss_big.item(), abs=1e-6)
    assert norm_micro.item() == pytest.approx(norm_big.item(), rel=1e-6)
    for p_micro, p_big in zip(
        model.parameters(), big.parameters(), strict=True
    ):  # SGD lr=1: the update is the gradient
        torch.testing.assert_close(p_micro, p_big, atol=1e-6, rtol=0)


def test_fp16_logged_grad_norm_matches_fp32(write_config, tmp_path):
    """The logged norm is unscaled (not multiplied by the loss scale of 65536) and within a few percent of fp32."""
    norms = {}
    for precision in ("32", "fp16"):
        cfg = load_config(
            write_config(name=f"p{precision}"),
            [
                f"trainer.precision={precision}",
                "logging.log_every_n_steps=1",
                "trainer.max_steps=3",
                "trainer.max_epochs=1",
            ],
        )
        summary = fit(cfg, QUIET)
        lines = read_jsonl(
            tmp_path
            / "runs"
            / f"p{precision}"
            / summary["run_dir"].split("/")[-1]
            / "metrics.jsonl"
        )
        norms[precision] = [r["grad_norm"] for r in lines if r["type"] == "step"]
    assert len(norms["fp16"]) == 3
    for a, b in zip(norms["32"], norms["fp16"], strict=True):
        assert b == pytest.approx(a, rel=0.03)


def test_same_seed_gives_identical_metrics(write_config, tmp_path):
    path = write_config({"model": {"dropout": 0.2}})
    runs = []
    for _ in range(2):
        summary = fit(load_config(path), QUIET)
        lines = read_jsonl(
            tmp_path / "runs" / "tiny" / summary["run_dir"].split("/")[-1] / "metrics.jsonl"
        )
        runs.append([{k: v for k, v in r.items() if k != "time"} for r in lines])
    assert runs[0] == runs[1]
    different = fit(load_config(path, ["seed=1"]), QUIET)
    assert different["final"]["train/loss"] != runs[0][-1]["train/loss"]


def test_grad_norm_is_logged_before_clipping(write_config, tmp_path):
    cfg = load_config(
        write_config(),
        [
            "trainer.grad_clip={max_norm: 0.001}",
            "logging.log_every_n_steps=1",
            "trainer.max_steps=2",
        ],
    )
    summary = fit(cfg, QUIET)
    run = only_run_dir(tmp_path / "runs")
    steps = [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "step"]
    assert all(
        r["grad_norm"] > 0.01 for r in steps
    )  # far above the clip threshold: the pre-clip norm
    assert summary["steps"] == 2


def test_warmup_cosine_lr_per_step_and_step_schedule_per_epoch(write_config, tmp_path):
    cfg = load_config(
        write_config(name="wc"),
        [
            "scheduler={name: warmup_cosine, warmup_steps: 4}",
            "logging.log_every_n_steps=1",
            "optimizer.lr=0.1",
        ],
    )
    fit(cfg, QUIET)
    lines = read_jsonl(only_run_dir(tmp_path / "runs") / "metrics.jsonl")
    steps = [r for r in lines if r["type"] == "step"]
    total = steps[-1]["step"]
    for r in steps:  # the LR logged after step s is the one the next step uses: factor(s)
        assert r["lr"] == pytest.approx(
            0.1 * warmup_cosine_factor(r["step"], 4, total, 0.0), abs=1e-9
        )
    assert steps[-1]["lr"] == pytest.approx(0.0, abs=1e-12)

    cfg = load_config(
        write_config(name="st"),
        ["scheduler={name: step, step_size: 1, gamma: 0.5}", "trainer.max_epochs=3"],
    )
    summary = fit(cfg, QUIET)
    epochs = [
        r
        for r in read_jsonl(
            tmp_path / "runs" / "st" / summary["run_dir"].split("/")[-1] / "metrics.jsonl"
        )
        if r["type"] == "epoch"
    ]
    assert [r["lr"] for r in epochs] == pytest.approx([0.005, 0.0025, 0.00125])


def test_warmup_cosine_factor_shape():
    assert warmup_cosine_factor(0, 10, 100, 0.0) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, 10, 100, 0.0) == pytest.approx(1.0)
    assert warmup_cosine_factor(55, 10, 100, 0.0) == pytest.approx(0.5)
    assert warmup_cosine_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    groups = param_groups(model, 0.1, decay_bias_and_norm=False)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    everything = param_groups(model, 0.1, decay_bias_and_norm=True)
    assert len(everything) == 1 and len(everything[0]["params"]) == 6


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad"])
def test_every_optimizer_learns_moons(write_config, optimizer):
    lr = {"sgd": 0.5, "momentum": 0.1, "adagrad": 0.1}.get(optimizer, 0.01)
    cfg = load_config(
        write_config({"data": {"source": "moons", "n_samples": 400}}, name=optimizer),
        [f"optimizer={{name: {optimizer}, lr: {lr}}}", "trainer.max_epochs=15"],
    )
    summary = fit(cfg, QUIET)
    assert summary["final"]["val/acc"] > 0.85, summary["final"]


def test_lbfgs_trains_end_to_end(write_config):
    cfg = load_config(
        write_config({"data": {"source": "moons", "n_samples": 400, "batch_size": 400}}),
        ["optimizer={name: lbfgs, lr: 1.0, max_iter: 10}", "trainer.max_epochs=8"],
    )
    summary = fit(cfg, QUIET)
    assert summary["steps"] == 8
    assert summary["final"]["val/acc"] > 0.9 and math.isfinite(summary["final"]["train/loss"])


def test_regression_and_other_losses(write_config, tmp_path):
    for loss in ("mse", "l1", "huber"):
        cfg = load_config(
            write_config({"data": {"source": "sine", "normalize": True}}, name=loss),
            [f"loss.name={loss}", "trainer.max_epochs=5"],
        )
        summary = fit(cfg, QUIET)
        assert "val/acc" not in summary["final"] and summary["final"]["val/loss"] < 0.6
    nll = fit(load_config(write_config(name="nll"), ["loss.name=nll"]), QUIET)
    ce = fit(load_config(write_config(name="ce"), ["loss.name=cross_entropy"]), QUIET)
    assert nll["final"]["val/loss"] == pytest.approx(
        ce["final"]["val/loss"], rel=1e-4
    )  # same math, LogSoftmax+NLL
    bce = fit(
        load_config(
            write_config({"data": {"source": "moons"}}, name="bce"), ["loss.name=bce_with_logits"]
        ),
        QUIET,
    )
    assert bce["final"]["val/acc"] > 0.7


def test_class_path_model_keeps_its_own_initialisation(tmp_path, monkeypatch, write_config):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "constnet.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class ConstNet(nn.Module):\n"
        "    def __init__(self, value: float = 0.25):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(2, 3)\n"
        "        nn.init.constant_(self.fc.weight, value)\n"
        "        nn.init.constant_(self.fc.bias, value)\n\n"
        "    def forward(self, x):\n        return self.fc(x)\n"
    )
    cfg = load_config(
        write_config({"=model": {"class_path": "constnet.ConstNet", "init_args": {"value": 0.5}}})
    )
    spec = DataSpec("classification", (2,), 3, ())
    model = build_model(cfg.model, spec, "cross_entropy")
    assert torch.all(model.fc.weight == 0.5) and torch.all(model.fc.bias == 0.5)
    summary = fit(cfg, QUIET)
    assert json.loads((tmp_path / summary["run_dir"] / "summary.json").read_text())["epochs"] == 2


def test_quickstart_config_trains_a_good_digit_classifier(tmp_path):
    """The README's promise: the shipped quick start reaches >95% on held-out digits."""
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = load_config(
        root / "configs" / "quickstart.yaml",
        [f"logging.run_dir={tmp_path}", "logging.tensorboard=false"],
    )
    summary = fit(cfg, QUIET)
    assert summary["final"]["val/acc"] > 0.95 and summary["test"]["test/acc"] > 0.95


def test_running_sums_avoid_float64_on_mps():
    """MPS has no float64: loss and count sums fall back to float32 there, float64 elsewhere."""
    from bptrain.runtime import sum_dtype

    assert sum_dtype(torch.device("mps")) == torch.float32
    assert sum_dtype(torch.device("cpu")) == torch.float64
