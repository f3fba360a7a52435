"""Recurrent layers: the total error signal through time ‖∂L/∂h_t‖ equals a hand-unrolled RNNCell."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bptrain.diagnostics import inspect_gradients


class LastStep(nn.Module):
    def __init__(self, kind: type[nn.RNNBase]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = kind(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 12, 3, generator=generator), torch.randint(
        0, 2, (4,), generator=generator
    )


def _cell_unrolled_norms(model: LastStep, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    cell = nn.RNNCell(3, 8)
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in model.rnn.state_dict().items()})
    h = torch.zeros(x.shape[0], 8)
    states = []
    for t in range(x.shape[1]):
        h = cell(x[:, t], h)
        states.append(h)
    loss = nn.functional.cross_entropy(model.head(h), y)
    return [float(g.norm()) for g in torch.autograd.grad(loss, states)]


def test_signal_through_time_is_the_total_derivative() -> None:
    model = LastStep(nn.RNN)
    x, y = _batch()
    report = inspect_gradients(model, nn.functional.cross_entropy, [(x, y)])
    (rnn,) = report.recurrent
    assert rnn["module"] == "rnn"
    expected = _cell_unrolled_norms(model, x, y)
    assert rnn["signal_norm_through_time"] == pytest.approx(expected, rel=1e-4)
    # Only the last step feeds the loss directly; earlier steps get their signal through the recurrence.
    assert all(n > 0 for n in expected)
    assert rnn["factor_per_step"] < 1


def test_lstm_is_analysed_too() -> None:
    x, y = _batch()
    report = inspect_gradients(LastStep(nn.LSTM), nn.functional.cross_entropy, [(x, y)])
    (rnn,) = report.recurrent
    assert len(rnn["signal_norm_through_time"]) == 12
