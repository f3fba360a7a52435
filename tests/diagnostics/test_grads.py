"""GradFlowMonitor: per-layer stats equal a direct computation, and missing gradients are reported."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bptrain.grads import GradFlowMonitor, to_floats


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.used(x)))


def _backward(model: nn.Module) -> None:
    torch.manual_seed(0)
    loss = model(torch.randn(8, 4)).square().mean()
    loss.backward()


def test_grad_norms_equal_direct_computation_and_none_grads_are_reported() -> None:
    torch.manual_seed(0)
    model = WithUnused()
    _backward(model)
    stats = GradFlowMonitor(model).grad_stats()
    assert all(v.ndim == 0 for v in stats.values())
    floats = to_floats(stats)
    for path in ("used", "head"):
        module = model.get_submodule(path)
        direct = math.sqrt(sum(float(p.grad.square().sum()) for p in module.parameters()))
        assert floats[f"grad_norm/layer/{path}"] == pytest.approx(direct, rel=1e-6)
        assert floats[f"nonfinite_grads/layer/{path}"] == 0
    assert math.isnan(floats["grad_norm/layer/unused"])
    assert floats["missing_grads/layer/unused"] == 2
    assert "missing_grads/layer/used" not in floats


def test_nonfinite_gradient_entries_are_counted_per_layer() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    _backward(model)
    model[0].weight.grad[0, 0] = float("nan")
    model[0].weight.grad[1, 2] = float("inf")
    model[0].bias.grad[0] = float("-inf")
    floats = to_floats(GradFlowMonitor(model).grad_stats())
    assert floats["nonfinite_grads/layer/0"] == 3
    assert floats["nonfinite_grads/layer/1"] == 0


def test_update_ratios_equal_direct_computation() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    monitor = GradFlowMonitor(model)
    _backward(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    monitor.snapshot_weights()
    optimizer.step()
    ratios = to_floats(monitor.update_ratios())
    for path in ("0", "2"):
        names = [n for n in before if n.startswith(path + ".")]
        delta = math.sqrt(
            sum(
                float((dict(model.named_parameters())[n].detach() - before[n]).square().sum())
                for n in names
            )
        )
        base = math.sqrt(sum(float(before[n].square().sum()) for n in names))
        assert ratios[f"update_ratio/layer/{path}"] == pytest.approx(delta / base, rel=1e-5)


def test_update_ratios_need_a_snapshot() -> None:
    with pytest.raises(RuntimeError, match="snapshot_weights"):
        GradFlowMonitor(nn.Linear(2, 2)).update_ratios()


def test_frozen_parameters_are_not_monitored() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].requires_grad_(False)
    _backward_2d(model)
    stats = GradFlowMonitor(model).grad_stats()
    assert "grad_norm/layer/0" not in stats
    assert "grad_norm/layer/1" in stats


def _backward_2d(model: nn.Module) -> None:
    model(torch.randn(4, 2)).sum().backward()


def test_grad_inspect_mode_is_float64_and_counts_frozen_weights_not_as_missing() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    _backward(model)
    monitor = GradFlowMonitor(model, float64=True, include_frozen=True)
    stats = {**monitor.grad_stats(), **monitor.weight_norms()}
    assert stats["grad_norm/layer/0"].dtype == torch.float64
    floats = to_floats(stats)
    first = model[0]
    assert floats["grad_norm/layer/0"] == float(first.bias.grad.double().norm())
    both = torch.stack([first.weight.detach().double().norm(), first.bias.detach().double().norm()])
    assert floats["weight_norm/layer/0"] == float(torch.linalg.vector_norm(both))
    assert "missing_grads/layer/0" not in floats
    # fit's monitor leaves frozen parameters out altogether
    assert [id(p) for p in GradFlowMonitor(model).params] == [
        id(first.bias),
        id(model[1].weight),
        id(model[1].bias),
    ]
