"""Mean-field signal propagation: what the init scale predicts the error signal should do.

Backward through ``Linear_{l+1} ∘ φ``, the chain rule gives
δ_l = φ'(h_l) ⊙ (W_{l+1}ᵀ δ_{l+1}). For random W with Var[W] = σ_w²/fan_in,
E‖W ᵀδ‖² = σ_w² ‖δ‖², and the local derivative multiplies each entry by φ'(h), so

    ‖δ_l‖² / ‖δ_{l+1}‖² ≈ χ = σ_w² · E[φ'(h)²],     per-layer norm factor = √χ.

ReLU: E[φ'²] = 1/2, so Kaiming (σ_w² = 2) keeps χ = 1 and Xavier (σ_w² = 1)
gives √χ ≈ 0.707. Sigmoid: φ' ≤ 1/4, so χ ≤ σ_w²/16 and the signal shrinks
about 4x per layer. This module owns recognising σ_w² and naming the init.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

THEORY_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
INIT_TOLERANCE = 0.15


def fan_in_out(weight: Tensor, module: nn.Module) -> tuple[int, int]:
    """fan_in/fan_out as PyTorch's init functions count them (receptive field included)."""
    receptive = weight[0][0].numel() if weight.ndim > 2 else 1
    fan_in = weight.shape[1] * receptive
    fan_out = weight.shape[0] * receptive
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        fan_in, fan_out = fan_out, fan_in
    return fan_in, fan_out


def sigma_w2(module: nn.Module) -> float | None:
    """σ_w² = fan_in · Var[W] of a Linear/Conv weight (None for other modules)."""
    weight = getattr(module, "weight", None)
    if not isinstance(module, THEORY_LAYERS) or not isinstance(weight, Tensor) or weight.ndim < 2:
        return None
    fan_in, _ = fan_in_out(weight, module)
    return float(fan_in * weight.detach().double().var(unbiased=False))


def guess_init(module: nn.Module, scale: float) -> str:
    """Name the init whose σ_w² is within 15% of the measured one."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        return "unknown"
    fan_in, fan_out = fan_in_out(weight, module)
    candidates = {
        "pytorch default (σ_w²≈1/3)": 1 / 3,
        "xavier/lecun (σ_w²≈1)" if fan_in == fan_out else "lecun (σ_w²≈1)": 1.0,
        "kaiming (σ_w²≈2)": 2.0,
    }
    if fan_in != fan_out:
        candidates[f"xavier (σ_w²≈{2 * fan_in / (fan_in + fan_out):.2f})"] = (
            2 * fan_in / (fan_in + fan_out)
        )
    for name, expected in candidates.items():
        if abs(scale - expected) <= INIT_TOLERANCE * expected:
            return name
    if scale > 0:
        nearest = min(candidates.items(), key=lambda item: abs(math.log(scale / item[1])))
        gain = math.sqrt(scale / nearest[1])
        return f"custom (σ_w²={scale:.3g}, {nearest[0].split(' ')[0]} x gain {gain:.2g})"
    return "zero"


def chi(next_sigma_w2: float, derivative_sq: float) -> float:
    """χ = σ_w² · E[φ'(h)²]: predicted ‖δ_l‖² / ‖δ_{l+1}‖²."""
    return next_sigma_w2 * derivative_sq
