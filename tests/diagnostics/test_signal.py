"""The per-layer numbers equal an independent autograd computation on the same weights and batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bptrain.diagnostics import inspect_gradients


def _independent(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, float], dict[str, float]]:
    """∂L/∂W via torch.autograd.grad, and ∂L/∂(layer output) via outputs captured by hand."""
    outputs: dict[str, torch.Tensor] = {}
    h = x
    for name, module in model.named_children():
        h = module(h)
        outputs[name] = h
    loss = nn.functional.cross_entropy(h, y)
    linear = [n for n, m in model.named_children() if isinstance(m, nn.Linear)]
    params = [p for n in linear for p in model.get_submodule(n).parameters()]
    signals = torch.autograd.grad(loss, [outputs[n] for n in linear], retain_graph=True)
    grads = torch.autograd.grad(loss, params)
    grad_norms = {
        n: float(torch.sqrt(grads[2 * i].square().sum() + grads[2 * i + 1].square().sum()))
        for i, n in enumerate(linear)
    }
    return grad_norms, {n: float(s.norm()) for n, s in zip(linear, signals, strict=True)}


def test_grad_and_signal_norms_match_independent_autograd(mlp, classification_batch) -> None:
    model = mlp(depth=4, width=16, activation=nn.Tanh, sigma_w2=1.5, n_in=8)
    x, y = classification_batch(32, 8)
    report = inspect_gradients(model, nn.functional.cross_entropy, [(x, y)])
    grad_norms, signals = _independent(model, x, y)
    assert [layer.name for layer in report.layers] == list(grad_norms)
    for layer in report.layers:
        assert layer.grad_norm == pytest.approx(grad_norms[layer.name], rel=1e-5)
        assert layer.signal_norm == pytest.approx(signals[layer.name], rel=1e-5)
        weight_norm = float(
            torch.sqrt(
                sum(p.detach().square().sum() for p in model.get_submodule(layer.name).parameters())
            )
        )
        assert layer.weight_norm == pytest.approx(weight_norm, rel=1e-5)


def test_several_batches_average_the_gradient_and_rms_the_signal(mlp, classification_batch) -> None:
    model = mlp(depth=2, width=8, activation=nn.ReLU, sigma_w2=2.0, n_in=4)
    batches = [classification_batch(16, 4, seed=s) for s in (1, 2)]
    report = inspect_gradients(model, nn.functional.cross_entropy, batches)
    loss = sum(nn.functional.cross_entropy(model(x), y) for x, y in batches) / 2
    first = model.get_submodule("0")
    grads = torch.autograd.grad(loss, list(first.parameters()))
    assert report.layers[0].grad_norm == pytest.approx(
        float(torch.sqrt(sum(g.square().sum() for g in grads))), rel=1e-5
    )
    per_batch = [_independent(model, x, y)[1]["0"] for x, y in batches]
    rms = ((per_batch[0] ** 2 + per_batch[1] ** 2) / 2) ** 0.5
    assert report.layers[0].signal_norm == pytest.approx(rms, rel=1e-5)


def test_the_inspected_model_is_left_untouched(mlp, classification_batch) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = classification_batch(16, 4, classes=3)
    inspect_gradients(
        model,
        nn.functional.cross_entropy,
        [(x, y)],
        make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.5),
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_layers_follow_forward_order_not_registration_order(classification_batch) -> None:
    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Linear(6, 3)
            self.early = nn.Linear(4, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.late(torch.relu(self.early(x)))

    x, y = classification_batch(8, 4, classes=3)
    report = inspect_gradients(Reversed(), nn.functional.cross_entropy, [(x, y)])
    assert [layer.name for layer in report.layers] == ["early", "late"]
