"""Gradient noise tests equal a direct computation from per-sample gradients taken one sample at a time."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bptrain.diagnostics import InspectOptions, inspect_gradients


def _direct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double())
    g = torch.stack(rows)
    b = g.shape[0]
    mean = g.mean(0)
    norm_sq = float(mean @ mean)
    inner = g @ mean
    projection = inner[:, None] / norm_sq * mean[None, :]
    variance = g.var(0, unbiased=True)
    usable = variance > 0
    return {
        "norm_test": math.sqrt(float((g - mean).square().sum()) / (b * (b - 1)))
        / math.sqrt(norm_sq),
        "inner_product_test": math.sqrt(float((inner - norm_sq).square().sum()) / (b * (b - 1)))
        / norm_sq,
        "orthogonality_test": math.sqrt(float((g - projection).square().sum()) / (b * (b - 1)))
        / math.sqrt(norm_sq),
        "gsnr": float((mean[usable].square() / variance[usable]).mean()),
    }


def test_noise_tests_equal_a_per_sample_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 4))
    model.train()
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 6, generator=generator), torch.randint(0, 4, (40,), generator=generator)
    report = inspect_gradients(
        model, nn.functional.cross_entropy, [(x, y)], options=InspectOptions(noise=True)
    )
    tests = report.gradient_tests
    assert tests is not None and tests["samples"] == 40
    expected = _direct(
        model.eval(), x, y
    )  # per-sample gradients are taken with BatchNorm in eval mode
    for key, value in expected.items():
        assert tests[key] == pytest.approx(value, rel=1e-4), key
    assert tests["suggested_batch_size"] == pytest.approx(40 * expected["norm_test"] ** 2, rel=1e-4)
    assert tests["batch_too_small"] == (expected["norm_test"] > 1)
