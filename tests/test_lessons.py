"""The outcomes the teaching configs claim, checked at small scale (and, with BPTRAIN_SLOW=1,
at full scale): backpropagation's classic lessons, measured rather than asserted in prose."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from rich.console import Console

from bptrain.config import load_config
from bptrain.train import fit

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and CI machines are small and shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(name: str, tmp_path: Path, *overrides: str) -> dict[str, float]:
    cfg = load_config(
        CONFIGS / f"{name}.yaml",
        [
            f"logging.run_dir={tmp_path}",
            "logging.tensorboard=false",
            "logging.progress=plain",
            *overrides,
        ],
    )
    return fit(cfg, Console(quiet=True))["final"]


def test_relu_kaiming_trains_the_deep_mlp_that_sigmoid_xavier_cannot(tmp_path):
    """The four vanishing-gradient configs, as shipped (10 epochs on the digits)."""
    sigmoid = train("vanishing_sigmoid_xavier", tmp_path)["val/acc"]
    relu = train("vanishing_relu_kaiming", tmp_path)["val/acc"]
    batchnorm = train("vanishing_batchnorm", tmp_path)["val/acc"]
    residual = train("vanishing_residual", tmp_path)["val/acc"]
    assert sigmoid < 0.25  # chance is 0.10: the gradient never reaches the first layers
    assert relu > 0.6 and batchnorm > 0.8 and residual > 0.75
    assert min(relu, batchnorm, residual) > sigmoid + 0.4


def test_lstm_beats_the_plain_rnn_on_the_adding_problem(tmp_path):
    """adding_problem.yaml at length 30 with 1,000 sequences: the LSTM solves it, the RNN stays near
    the 0.167 MSE of always predicting the mean."""
    small = ("data.length=30", "data.n_samples=1000", "trainer.max_epochs=20")
    lstm = train("adding_problem", tmp_path, "model.cell=lstm", *small)["val/loss"]
    rnn = train("adding_problem", tmp_path, "model.cell=rnn", *small)["val/loss"]
    assert lstm < 0.05
    assert rnn > 0.1
    assert lstm < rnn / 4


def test_lstm_forecasts_the_sine_wave(tmp_path):
    final = train("lstm_forecast", tmp_path, "data.n_samples=1000", "trainer.max_epochs=5")
    assert final["val/loss"] < 0.05  # predicting the mean scores about 0.5


SHIPPED_OUTCOMES = {
    # config: (metric, "<" or ">", threshold) as each config's comment states it
    "vanishing_sigmoid_xavier": ("val/acc", "<", 0.2),
    "vanishing_relu_kaiming": ("val/acc", ">", 0.75),
    "vanishing_batchnorm": ("val/acc", ">", 0.9),
    "vanishing_residual": ("val/acc", ">", 0.85),
    "cnn_digits": ("val/acc", ">", 0.95),
    "resnet_shapes": ("val/acc", ">", 0.95),
    "lstm_forecast": ("val/loss", "<", 0.01),
    "transformer_majority": ("val/acc", ">", 0.9),
    "adding_problem": ("val/loss", "<", 0.01),
    "copy_memory": ("val/acc", ">", 0.9),
}


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("BPTRAIN_SLOW") != "1", reason="full-size runs: set BPTRAIN_SLOW=1"
)
@pytest.mark.parametrize("name", sorted(SHIPPED_OUTCOMES))
def test_shipped_config_reaches_its_documented_outcome(name, tmp_path):
    metric, direction, threshold = SHIPPED_OUTCOMES[name]
    value = train(name, tmp_path)[metric]
    assert value < threshold if direction == "<" else value > threshold, (name, metric, value)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("BPTRAIN_SLOW") != "1", reason="full-size runs: set BPTRAIN_SLOW=1"
)
def test_plain_rnn_fails_the_shipped_adding_problem(tmp_path):
    assert train("adding_problem", tmp_path, "model.cell=rnn")["val/loss"] > 0.1


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("BPTRAIN_SLOW") != "1", reason="full-size runs: set BPTRAIN_SLOW=1"
)
def test_pgd_training_keeps_the_robust_accuracy_standard_training_loses(tmp_path):
    """robust_digits.yaml as shipped and with trainer.adversarial=null, attacked with PGD-10 at
    epsilon 0.1 on the test split (the table of docs/robustness.md)."""
    from bptrain.robustness import evaluate_checkpoint_robustness

    reports = {}
    for name, extra in (("pgd", ()), ("standard", ("trainer.adversarial=null",))):
        run_dir = tmp_path / name
        overrides = [f"logging.run_dir={run_dir}", "logging.tensorboard=false", *extra]
        cfg = load_config(CONFIGS / "robust_digits.yaml", overrides)
        fit(cfg, Console(quiet=True))
        (checkpoint,) = run_dir.glob("*/*/checkpoints/last.pt")
        reports[name] = evaluate_checkpoint_robustness(
            cfg, checkpoint, "test", "pgd", 0.1, [0.0, 0.1], 10, 1, None, "linf"
        )
    pgd, standard = reports["pgd"], reports["standard"]
    assert standard["clean_acc"] > 0.93 and pgd["clean_acc"] > 0.88
    assert pgd["robust_acc"] > 0.45 and standard["robust_acc"] < 0.1
    assert pgd["warnings"] == [] and standard["warnings"] == []
