"""Curvature: power iteration on Hessian-vector products finds the exact top eigenvalue of a quadratic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bptrain.diagnostics import InspectOptions, inspect_gradients


def _linear_regression() -> tuple[nn.Linear, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=generator, dtype=torch.float64) * torch.tensor(
        [3.0, 1.0, 1.0, 0.5, 0.2], dtype=torch.float64
    )
    y = torch.randn(64, 1, generator=generator, dtype=torch.float64)
    model = nn.Linear(5, 1).double()
    design = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], dim=1)
    hessian = 2 * design.T @ design / 64  # MSE: L = mean((Xw + b - y)^2)
    return model, (x, y), hessian


def test_top_eigenvalue_and_trace_match_the_explicit_hessian() -> None:
    model, batch, hessian = _linear_regression()
    options = InspectOptions(
        curvature=True, power_iterations=500, power_tolerance=1e-10, hutchinson_samples=200
    )
    report = inspect_gradients(model, nn.functional.mse_loss, [batch], options=options)
    exact = float(torch.linalg.eigvalsh(hessian)[-1])
    assert report.hessian_max_eigenvalue == pytest.approx(exact, rel=1e-6)
    assert report.curvature["converged"]
    assert report.curvature["hessian_trace"] == pytest.approx(float(hessian.trace()), rel=0.15)


def test_lr_beyond_the_stability_edge_is_flagged_for_sgd() -> None:
    model, batch, hessian = _linear_regression()
    exact = float(torch.linalg.eigvalsh(hessian)[-1])
    options = InspectOptions(curvature=True, power_iterations=300, power_tolerance=1e-9)

    def flags_at(lr: float) -> set[str]:
        report = inspect_gradients(
            model,
            nn.functional.mse_loss,
            [batch],
            options=options,
            make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        )
        return {(f.name, f.severity) for f in report.flags}

    assert ("lr_too_high", "error") in flags_at(2.5 / exact)
    assert ("lr_too_high", "error") not in flags_at(1.5 / exact)
