"""Autograd versus central finite differences, in float64, on a sample of parameter entries.

A custom ``torch.autograd.Function`` with a wrong ``backward`` trains silently
in the wrong direction; comparing ∂L/∂θ from autograd with
(L(θ+ε) − L(θ−ε)) / 2ε on a few entries of every layer catches it. The copy is
float64 and in eval mode (dropout off, BatchNorm on running statistics) so the
loss is a deterministic, smooth-enough function of θ. Only the first few samples
of the batch are used: every sample adds ReLU kinks that a ±ε step can cross
(a kink crossed looks exactly like a wrong gradient), and every sample adds cost.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bptrain.diagnostics.batches import call_model
from bptrain.grads import layer_parameters

EPSILON = 1e-6
# Round-off of a float64 central difference is about ulp(L)/ε; entries whose gradient is smaller
# than this many times that noise are compared against the noise floor instead (see relative_error).
NOISE_FLOOR_MULTIPLE = 1e4


def first_samples(value: Any, count: int) -> Any:
    if isinstance(value, Tensor):
        return value[:count] if value.ndim else value
    if isinstance(value, tuple | list):
        return type(value)(first_samples(v, count) for v in value)
    if isinstance(value, dict):
        return {k: first_samples(v, count) for k, v in value.items()}
    return value


def to_float64(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, tuple | list):
        return type(value)(to_float64(v) for v in value)
    if isinstance(value, dict):
        return {k: to_float64(v) for k, v in value.items()}
    return value


def relative_error(analytic: float, numeric: float, floor: float) -> float:
    return abs(analytic - numeric) / max(abs(analytic), abs(numeric), floor)


def finite_difference_errors(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batch: tuple[Any, Any],
    *,
    entries_per_param: int = 4,
    samples: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """Max relative error |autograd − finite difference| per module path, on sampled entries."""
    model64 = copy.deepcopy(model).double().eval()
    x, y = (
        to_float64(first_samples(batch[0], samples)),
        to_float64(first_samples(batch[1], samples)),
    )

    def loss_value() -> float:
        with torch.no_grad():
            return float(loss_fn(call_model(model64, x), y))

    groups = layer_parameters(model64)
    trainable = [p for params in groups.values() for _, p in params if p.requires_grad]
    loss = loss_fn(call_model(model64, x), y)
    grads = dict(
        zip(
            map(id, trainable), torch.autograd.grad(loss, trainable, allow_unused=True), strict=True
        )
    )
    floor = (
        NOISE_FLOOR_MULTIPLE
        * torch.finfo(torch.float64).eps
        * max(abs(float(loss.detach())), 1.0)
        / EPSILON
    )
    generator = torch.Generator().manual_seed(seed)
    errors: dict[str, float] = {}
    for path, params in groups.items():
        worst = 0.0
        for _, param in params:
            if not param.requires_grad:
                continue
            grad = grads[id(param)]
            analytic = (
                grad.reshape(-1)
                if grad is not None
                else torch.zeros(param.numel(), dtype=torch.float64)
            )
            flat = param.data.view(-1)
            for index in torch.randperm(param.numel(), generator=generator)[
                :entries_per_param
            ].tolist():
                original = float(flat[index])
                flat[index] = original + EPSILON
                plus = loss_value()
                flat[index] = original - EPSILON
                minus = loss_value()
                flat[index] = original
                numeric = (plus - minus) / (2 * EPSILON)
                worst = max(worst, relative_error(float(analytic[index]), numeric, floor))
        errors[path] = worst
    return errors
