"""Curvature of the loss: top Hessian eigenvalue (power iteration) and trace (Hutchinson).

Only Hessian-vector products are formed (double backward), never the Hessian.
On the local quadratic model, gradient descent diverges along the top
eigendirection when lr·λmax > 2 (heavy-ball momentum β: 2(1+β)). For Adam and
other adaptive optimizers the effective step is preconditioned, so the same
comparison is only a heuristic. The copy runs in eval mode so dropout does not
make the Hessian random. Attention runs on the math kernel of scaled_dot_product_attention:
the fused (flash / memory-efficient) kernels have no double backward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bptrain.diagnostics.batches import call_model


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _normalise(v: list[Tensor]) -> list[Tensor]:
    norm = torch.sqrt(_dot(v, v))
    return [x / norm for x in v]


def hessian_vector_product_fn(
    model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], batches: Sequence[tuple[Any, Any]]
) -> tuple[list[Tensor], Callable[[list[Tensor]], list[Tensor]]]:
    """The parameters and v ↦ Hv for the loss averaged over ``batches`` (graph built once)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = sum(loss_fn(call_model(model, x), y) for x, y in batches) / len(batches)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    params = [p for p, _ in used]
    grads_used = [g for _, g in used]

    def hvp(v: list[Tensor]) -> list[Tensor]:
        out = torch.autograd.grad(
            grads_used, params, grad_outputs=v, retain_graph=True, allow_unused=True
        )
        return [
            o if o is not None else torch.zeros_like(p) for o, p in zip(out, params, strict=True)
        ]

    return params, hvp


def top_eigenvalue(
    params: list[Tensor],
    hvp: Callable[[list[Tensor]], list[Tensor]],
    *,
    iterations: int,
    tolerance: float,
    generator: torch.Generator,
) -> tuple[float, int, bool]:
    """Power iteration: the eigenvalue of largest magnitude, iterations used, converged?"""
    v = _normalise(
        [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    )
    eigenvalue = 0.0
    for step in range(1, iterations + 1):
        hv = hvp(v)
        new = float(_dot(v, hv))
        norm = float(torch.sqrt(_dot(hv, hv)))
        if norm == 0.0:
            return 0.0, step, True
        v = [x / norm for x in hv]
        if step > 1 and abs(new - eigenvalue) <= tolerance * max(abs(new), 1e-12):
            return new, step, True
        eigenvalue = new
    return eigenvalue, iterations, False


def hutchinson_trace(
    params: list[Tensor],
    hvp: Callable[[list[Tensor]], list[Tensor]],
    *,
    samples: int,
    generator: torch.Generator,
) -> float:
    """tr(H) ≈ mean over Rademacher v of vᵀHv."""
    total = 0.0
    for _ in range(samples):
        v = [
            (torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p.dtype).to(p.device)
            for p in params
        ]
        total += float(_dot(v, hvp(v)))
    return total / max(samples, 1)


def analyse(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batches: Sequence[tuple[Any, Any]],
    *,
    iterations: int = 50,
    tolerance: float = 1e-4,
    hutchinson_samples: int = 10,
    seed: int = 0,
    lr: float | None = None,
    optimizer: str | None = None,
) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    frozen = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)
    try:  # the graph and every product built under the math kernel (the one with a double backward)
        with sdpa_kernel(SDPBackend.MATH):
            params, hvp = hessian_vector_product_fn(frozen, loss_fn, batches)
            eigenvalue, used, converged = top_eigenvalue(
                params, hvp, iterations=iterations, tolerance=tolerance, generator=generator
            )
            trace = hutchinson_trace(params, hvp, samples=hutchinson_samples, generator=generator)
    except RuntimeError as err:  # an operation of the model without a double backward
        return {"skipped": f"Hessian-vector products unavailable (no double backward?): {err}"}
    result: dict[str, Any] = {
        "hessian_max_eigenvalue": eigenvalue,
        "power_iterations": used,
        "converged": converged,
        "hessian_trace": trace,
        "hutchinson_samples": hutchinson_samples,
    }
    if lr is not None:
        result["lr_times_lambda_max"] = lr * eigenvalue
        result["stability_note"] = (
            "lr·λmax vs 2 is the stability edge of SGD"
            if optimizer in ("SGD", None)
            else f"{optimizer} preconditions its steps: lr·λmax vs 2 is only a heuristic"
        )
    return result
