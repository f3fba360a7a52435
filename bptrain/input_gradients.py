"""The input gradient ∂L/∂x: per-sample sizes and the features the loss is most sensitive to.

The same gradient an adversarial attack follows, summarised for ``grad-inspect``: how large
‖∂L/∂x‖ is per sample (large: small input changes move the loss a lot, the model is easy to
attack), and which input features have the largest mean |∂L/∂x| over the inspected samples (a
saliency summary: what the model looks at). Gradients are taken in raw input units (through
``data.normalize``, as attacks measure epsilon) with the model in eval mode, each sample's
gradient of its own loss (a sum-reduced loss, so batch size does not scale it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from bptrain.adversarial import eval_mode
from bptrain.data import InputSpace
from bptrain.losses import Objective


def per_sample_loss(objective: Objective, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each sample's loss (the objective's loss, unreduced; per-step labels averaged per sample)."""
    output, y_aligned = objective._align(output, y)
    loss_fn = objective.loss_fn  # the configured loss (class weights, smoothing), unreduced here
    reduction, loss_fn.reduction = loss_fn.reduction, "none"
    try:
        losses = loss_fn(output, y_aligned)
    finally:
        loss_fn.reduction = reduction
    return losses.reshape(len(y), -1).mean(1)


def input_gradient_summary(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    objective: Objective,
    space: InputSpace | None,
    device: torch.device,
    top_k: int = 10,
) -> dict[str, Any]:
    """Per-sample ‖∂L/∂x‖₂ (raw units) and the ``top_k`` features by mean |∂L/∂x|."""
    if space is None:
        return {"available": False, "reason": "token-id inputs have no gradient"}
    norms: list[torch.Tensor] = []
    abs_sum: torch.Tensor | None = None
    samples = 0
    with eval_mode(model):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            x_raw = space.to_raw(x.float()).requires_grad_(True)
            loss = per_sample_loss(objective, model(space.to_model(x_raw)).float(), y).sum()
            (grad,) = torch.autograd.grad(loss, x_raw)
            norms.append(grad.flatten(1).norm(dim=1).detach().cpu())
            batch_abs = grad.abs().sum(0).detach().cpu()
            abs_sum = batch_abs if abs_sum is None else abs_sum + batch_abs
            samples += len(x)
    if abs_sum is None:
        return {"available": False, "reason": "no samples"}
    per_sample = torch.cat(norms).double()
    mean_abs = (abs_sum.double() / samples).flatten()
    shape = tuple(abs_sum.shape)
    top = torch.topk(mean_abs, min(top_k, mean_abs.numel()))
    return {
        "available": True,
        "samples": samples,
        "units": "raw input units" if space.std is not None else "input units",
        "norm_mean": float(per_sample.mean()),
        "norm_median": float(per_sample.median()),
        "norm_min": float(per_sample.min()),
        "norm_max": float(per_sample.max()),
        "per_sample_norm": [float(v) for v in per_sample],
        "top_features": [
            {
                "feature": _feature_name(int(i), shape),
                "index": list(_unravel(int(i), shape)),
                "mean_abs_grad": float(v),
            }
            for v, i in zip(top.values, top.indices, strict=True)
        ],
    }


def _unravel(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(index % size)
        index //= size
    return tuple(reversed(out))


def _feature_name(index: int, shape: tuple[int, ...]) -> str:
    return "x[" + ",".join(str(i) for i in _unravel(index, shape)) + "]"


def render_lines(summary: dict[str, Any]) -> list[str]:
    """The text report's lines."""
    if not summary.get("available"):
        return [f"input gradient: not available ({summary.get('reason')})"]
    top = ", ".join(f"{f['feature']} {f['mean_abs_grad']:.3g}" for f in summary["top_features"][:5])
    return [
        f"input gradient ‖∂L/∂x‖ per sample ({summary['units']}, {summary['samples']} samples): "
        f"mean {summary['norm_mean']:.3g}, median {summary['norm_median']:.3g}, "
        f"max {summary['norm_max']:.3g}",
        f"largest mean |∂L/∂x| (what the loss is most sensitive to): {top}",
    ]
