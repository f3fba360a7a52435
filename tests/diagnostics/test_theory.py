"""Mean-field theory at init on deep (20 layers) wide (128) MLPs: measured vs predicted per-layer factor."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from bptrain.diagnostics import inspect_gradients

DEPTH, WIDTH, BATCH = 20, 128, 512


def _middle_factor(report) -> float:
    factors = [x.signal_factor for x in report.layers[3:-3] if x.signal_factor is not None]
    return statistics.median(factors)


def _flag_names(report) -> set[str]:
    return {f.name for f in report.flags}


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, WIDTH, generator=generator), torch.randint(
        0, 10, (BATCH,), generator=generator
    )


@pytest.mark.parametrize(
    ("activation", "sigma_w2", "expected", "flag"),
    [
        (nn.Sigmoid, 1.0, 0.236, "vanishing"),  # Xavier: σ' ≤ 1/4
        (nn.ReLU, 2.0, 1.0, None),  # Kaiming: χ = 2 · 1/2 = 1
        (nn.ReLU, 1.0, 0.5**0.5, "vanishing"),  # Xavier under ReLU: χ = 1/2
        (nn.ReLU, 4.0, 2**0.5, "exploding"),  # σ_w² = 4: χ = 2
    ],
    ids=["sigmoid-xavier", "relu-kaiming", "relu-xavier", "relu-sigma4"],
)
def test_signal_factor_matches_mean_field_theory(
    mlp, batch, activation, sigma_w2, expected, flag
) -> None:
    model = mlp(depth=DEPTH, width=WIDTH, activation=activation, sigma_w2=sigma_w2)
    report = inspect_gradients(model, nn.functional.cross_entropy, [batch])
    measured = _middle_factor(report)
    assert measured == pytest.approx(expected, rel=0.05)
    predicted = statistics.median(x.expected_factor for x in report.layers[3:-3])
    assert predicted == pytest.approx(expected, rel=0.05)
    assert statistics.median(x.sigma_w2 for x in report.layers[1:-1]) == pytest.approx(
        sigma_w2, rel=0.05
    )
    names = _flag_names(report)
    if flag is None:
        assert not names & {"vanishing", "exploding"}, report.flags
    else:
        assert flag in names
        assert ({"vanishing", "exploding"} - {flag}).isdisjoint(names)


def test_sigmoid_verdict_names_the_cause_and_config_remedies(mlp, batch) -> None:
    report = inspect_gradients(
        mlp(depth=DEPTH, width=WIDTH, activation=nn.Sigmoid, sigma_w2=1.0),
        nn.functional.cross_entropy,
        [batch],
    )
    assert any(f.name == "vanishing" and f.severity == "error" for f in report.flags)
    for remedy in (
        "model.activation=relu",
        "model.init=kaiming_normal",
        "model.norm=batchnorm",
        "model.residual=true",
    ):
        assert remedy in report.verdict
    assert "1/4" in report.verdict


def test_hidden_layer_with_bias_minus_100_is_dead_and_starves_the_layers_below(mlp, batch) -> None:
    model = mlp(depth=DEPTH, width=WIDTH, activation=nn.ReLU, sigma_w2=2.0)
    dead_index = 10
    dead = model[2 * dead_index]
    with torch.no_grad():
        dead.bias.fill_(-100.0)
    report = inspect_gradients(model, nn.functional.cross_entropy, [batch])
    layer = report.layers[dead_index]
    assert layer.name == str(2 * dead_index)
    assert layer.activation is not None and layer.activation.dead_fraction == 1.0
    assert any(f.name == "dead" and f.severity == "error" for f in layer.flags)
    for below in report.layers[: dead_index + 1]:
        assert below.grad_norm == 0.0
        assert "no_grad" in {f.name for f in below.flags}
    # Above the dead layer every input is 0 (zero biases), so only the head's bias still learns.
    assert report.layers[-1].grad_norm > 0
    assert f"after {layer.name}" in report.verdict and "negative bias" in report.verdict


def test_theory_sees_through_dropout_between_activation_and_next_linear(batch) -> None:
    """The core's MLP is Linear -> activation -> Dropout -> Linear; train-mode dropout scales χ by 1/(1-p)."""
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for _ in range(8):
        linear = nn.Linear(WIDTH, WIDTH)
        nn.init.kaiming_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        blocks += [linear, nn.ReLU(), nn.Dropout(0.2)]
    model = nn.Sequential(*blocks, nn.Linear(WIDTH, 10))
    report = inspect_gradients(model, nn.functional.cross_entropy, [batch])
    expected = (1 / 0.8) ** 0.5  # χ = 2 · 1/2 / (1 - p)
    assert statistics.median(x.expected_factor for x in report.layers[:-1]) == pytest.approx(
        expected, rel=0.05
    )
    assert _middle_factor(report) == pytest.approx(expected, rel=0.05)
