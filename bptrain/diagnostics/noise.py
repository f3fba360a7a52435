"""Gradient noise: is the batch big enough for the gradient direction to be trusted?

Per-sample gradients g_i come from ``torch.func`` (functional_call + vmap + grad)
on a copy in eval mode (BatchNorm must not mix samples). With g_B = mean g_i
and B samples, as Cockpit (Schneider et al., 2021) defines the tests:

* norm test (Byrd et al., 2012): sqrt(Σ‖g_i − g_B‖² / (B(B−1))) / ‖g_B‖
* inner-product test (Bollapragada et al., 2017): sqrt(Σ(g_iᵀg_B − ‖g_B‖²)² / (B(B−1))) / ‖g_B‖²
* orthogonality test (Bollapragada et al., 2017):
  sqrt(Σ‖g_i − (g_iᵀg_B/‖g_B‖²) g_B‖² / (B(B−1))) / ‖g_B‖

Each is the largest θ (ν) for which the test would pass; values above 1 mean the
mini-batch gradient is dominated by noise. The norm test's suggested batch size
is B·θ², the size at which θ would reach 1. The gradient signal-to-noise ratio
(Liu et al., 2020) is E[g_j]²/Var[g_j] per parameter entry (sample variance),
averaged over entries.

``vmap`` cannot batch every module: the fused recurrent kernels (``nn.GRU``,
``nn.LSTM``, ``nn.RNN``) build their initial hidden state from the unbatched
view and fail. Those models get their g_i from a plain loop of one backward
per sample: the same numbers, B times slower.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

CHUNK = 64


def per_sample_gradients(
    model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], x: Tensor, y: Tensor
) -> tuple[list[str], Callable[[int, int], Tensor]]:
    """Names of the trainable parameters, and a function giving the flattened g_i of samples [a, b)."""
    frozen = copy.deepcopy(model).eval()
    params = {n: p.detach() for n, p in frozen.named_parameters() if p.requires_grad}
    buffers = dict(frozen.named_buffers())

    def sample_loss(weights: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(frozen, (weights, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    one_sample = grad(sample_loss)
    batched = not any(isinstance(m, nn.RNNBase) for m in frozen.modules())

    def chunk(start: int, stop: int) -> Tensor:
        if batched:
            grads = per_sample(params, x[start:stop], y[start:stop])
            return torch.cat([grads[n].reshape(stop - start, -1) for n in params], dim=1).double()
        rows = []
        for i in range(start, stop):
            g = one_sample(params, x[i], y[i])
            rows.append(torch.cat([g[n].reshape(-1) for n in params]))
        return torch.stack(rows).double()

    return list(params), chunk


def gradient_tests(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batch: tuple[Any, Any],
    *,
    max_samples: int = 256,
) -> dict[str, Any]:
    """Norm, inner-product and orthogonality tests and GSNR on (up to max_samples of) one batch."""
    x, y = batch
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        return {"skipped": "noise tests need a tensor input and target"}
    size = min(int(x.shape[0]), max_samples)
    if size < 2:
        return {"skipped": "noise tests need at least 2 samples"}
    _, chunk = per_sample_gradients(model, loss_fn, x[:size], y[:size])
    total = None
    total_sq = None
    for start in range(0, size, CHUNK):
        g = chunk(start, min(start + CHUNK, size))
        total = g.sum(0) if total is None else total + g.sum(0)
        total_sq = g.square().sum(0) if total_sq is None else total_sq + g.square().sum(0)
    assert total is not None and total_sq is not None
    mean = total / size
    sum_sq_norms = float(total_sq.sum())
    inner_dev = 0.0
    ortho = 0.0
    mean_sq = float(mean.square().sum())
    for start in range(0, size, CHUNK):
        g = chunk(start, min(start + CHUNK, size))
        inner = g @ mean
        inner_dev += float((inner - mean_sq).square().sum())
        ortho += (
            float((g.square().sum(1) - inner.square() / mean_sq).sum()) if mean_sq > 0 else math.nan
        )
    return summarise(size, mean, total_sq, sum_sq_norms, inner_dev, ortho)


def summarise(
    size: int, mean: Tensor, total_sq: Tensor, sum_sq_norms: float, inner_dev: float, ortho: float
) -> dict[str, Any]:
    norm_sq = float(mean.square().sum())
    scale = size * (size - 1)
    variance_l1 = sum_sq_norms - size * norm_sq  # Σ‖g_i − g_B‖²
    nan = math.nan
    norm_test = (
        math.sqrt(max(variance_l1, 0.0) / scale) / math.sqrt(norm_sq) if norm_sq > 0 else nan
    )
    inner_test = math.sqrt(inner_dev / scale) / norm_sq if norm_sq > 0 else nan
    ortho_test = math.sqrt(max(ortho, 0.0) / scale) / math.sqrt(norm_sq) if norm_sq > 0 else nan
    variance = (total_sq - size * mean.square()) / (size - 1)
    usable = variance > 0
    gsnr_entries = mean[usable].square() / variance[usable]
    gsnr = float(gsnr_entries.mean()) if gsnr_entries.numel() else nan
    suggested = size * norm_test**2 if math.isfinite(norm_test) else nan
    return {
        "samples": size,
        "norm_test": norm_test,
        "inner_product_test": inner_test,
        "orthogonality_test": ortho_test,
        "gsnr": gsnr,
        "gsnr_median": float(gsnr_entries.median()) if gsnr_entries.numel() else nan,
        "suggested_batch_size": suggested,
        "batch_too_small": bool(math.isfinite(norm_test) and norm_test > 1.0),
    }
