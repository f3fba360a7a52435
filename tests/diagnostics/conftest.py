"""Shared builders for the diagnostics tests: deep MLPs with a chosen activation and init."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

MLPFactory = Callable[..., nn.Sequential]


def build_mlp(
    depth: int,
    width: int,
    activation: type[nn.Module],
    sigma_w2: float,
    *,
    n_in: int | None = None,
    n_out: int = 10,
    seed: int = 0,
) -> nn.Sequential:
    """Linear+activation blocks with weights N(0, sigma_w2 / fan_in) and zero biases (head: PyTorch default)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = n_in or width
    for _ in range(depth):
        linear = nn.Linear(fan_in, width)
        nn.init.normal_(linear.weight, std=(sigma_w2 / fan_in) ** 0.5)
        nn.init.zeros_(linear.bias)
        layers += [linear, activation()]
        fan_in = width
    layers.append(nn.Linear(fan_in, n_out))
    return nn.Sequential(*layers)


@pytest.fixture
def mlp() -> MLPFactory:
    return build_mlp


@pytest.fixture
def classification_batch() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def make(n: int, d: int, classes: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(n, d, generator=generator), torch.randint(
            0, classes, (n,), generator=generator
        )

    return make
