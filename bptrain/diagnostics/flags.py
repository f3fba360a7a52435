"""Turning numbers into findings: thresholds, flags, and the plain-language verdict.

Every threshold lives in ``Thresholds`` (documented in docs/grad-inspect.md) so
tests and users can tighten or relax them; every remedy names the config key
the user would change (``model.activation``, ``model.init``, ``model.init_gain``,
``model.norm``, ``model.residual``, ``trainer.grad_clip.max_norm``, ``optimizer.lr``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from bptrain.diagnostics.report import Flag, LayerReport, NonfiniteSource, Report, Severity

RELU_FAMILY = (
    "ReLU",
    "ReLU6",
    "LeakyReLU",
    "PReLU",
    "RReLU",
    "ELU",
    "SELU",
    "CELU",
    "GELU",
    "SiLU",
    "Mish",
    "Softplus",
    "Hardswish",
)
SQUASHING = ("Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Softsign")


@dataclass(frozen=True)
class Thresholds:
    """When a number becomes a flag. Warning at the first value, error at the second."""

    vanishing_ratio: tuple[float, float] = (1e-2, 1e-4)
    """signal[first]/signal[last] (or a layer's signal/last) below this: vanishing."""
    exploding_ratio: tuple[float, float] = (1e2, 1e4)
    """signal[first]/signal[last] above this: exploding."""
    dead_fraction: tuple[float, float] = (0.5, 0.9)
    saturated_fraction: tuple[float, float] = (0.5, 0.9)
    update_ratio_high: tuple[float, float] = (5e-2, 2e-1)
    """Median ‖ΔW‖/‖W‖ of one optimizer step above this: lr_too_high. Not 1e-2: Adam's first step moves
    every entry by about lr, so lr=3e-3 on a Kaiming-initialised 64-wide layer already gives 0.017."""
    update_ratio_low: float = 1e-5
    """Median ‖ΔW‖/‖W‖ below this: lr_too_low (warning only)."""
    grad_check_tolerance: tuple[float, float] = (1e-3, 1e-1)
    """Max relative error autograd vs finite differences (float64) above this: grad_check."""


@dataclass(frozen=True)
class Reference:
    """What the vanishing/exploding flags compare each layer's error signal with.

    ``signal`` is the output layer's ‖∂L/∂out‖; ``low``..``high`` is the healthy band, the
    signal times the warning ratios (1e-2..1e2 by default). The console bars and the PNG mark
    both, so what is drawn and what is flagged are the same numbers.
    """

    signal: float
    low: float
    high: float


def reference(layers: list[LayerReport], limits: Thresholds | None = None) -> Reference | None:
    """The last layer's signal and the band around it; None when it is missing, 0 or not finite."""
    limits = limits or Thresholds()
    signals = [x.signal_norm for x in layers if x.signal_norm is not None]
    last = signals[-1] if signals else None
    if last is None or not math.isfinite(last) or last <= 0:
        return None
    return Reference(last, last * limits.vanishing_ratio[0], last * limits.exploding_ratio[0])


def _grade(value: float, limits: tuple[float, float], *, below: bool = False) -> Severity | None:
    warn, err = limits
    if below:
        return "error" if value < err else "warning" if value < warn else None
    return "error" if value > err else "warning" if value > warn else None


def layer_flags(layer: LayerReport, last_signal: float | None, limits: Thresholds) -> list[Flag]:
    """Flags that belong to one layer: dead, saturated, signal far from the output's, no_grad."""
    flags: list[Flag] = []
    health = layer.activation
    if health is not None:
        severity = _grade(health.dead_fraction, limits.dead_fraction)
        if severity:
            flags.append(
                Flag(
                    "dead",
                    severity,
                    f"{health.dead_fraction:.0%} of the units after "
                    f"{layer.name} ({health.kind}) are dead: φ'=0 for every sample",
                    layer.name,
                )
            )
        if health.saturated_fraction is not None:
            severity = _grade(health.saturated_fraction, limits.saturated_fraction)
            if severity:
                flags.append(
                    Flag(
                        "saturated",
                        severity,
                        f"{health.saturated_fraction:.0%} of the "
                        f"{health.kind} units after {layer.name} are saturated",
                        layer.name,
                    )
                )
    if layer.signal_norm is not None and last_signal and math.isfinite(layer.signal_norm):
        ratio = layer.signal_norm / last_signal
        severity = _grade(ratio, limits.vanishing_ratio, below=True)
        if severity:
            flags.append(
                Flag(
                    "vanishing",
                    severity,
                    f"error signal at {layer.name} is {ratio:.2g}x the output layer's",
                    layer.name,
                )
            )
        severity = _grade(ratio, limits.exploding_ratio)
        if severity:
            flags.append(
                Flag(
                    "exploding",
                    severity,
                    f"error signal at {layer.name} is {ratio:.2g}x the output layer's",
                    layer.name,
                )
            )
    for audit in layer.params:
        if audit.status in ("grad_none", "not_in_optimizer"):
            reason = (
                "its gradient is None (unused in forward, or detached)"
                if audit.status == "grad_none"
                else "it is not in any optimizer param group"
            )
            flags.append(
                Flag("no_grad", "error", f"{audit.name} never trains: {reason}", layer.name)
            )
        elif audit.status in ("grad_zero", "frozen"):
            reason = (
                "its gradient is exactly zero on every inspected batch"
                if audit.status == "grad_zero"
                else "requires_grad=False (intended if you set model.freeze)"
            )
            flags.append(
                Flag("no_grad", "warning", f"{audit.name} does not train: {reason}", layer.name)
            )
        elif audit.status == "nonfinite":
            flags.append(
                Flag("nonfinite", "error", f"{audit.name} has a NaN/Inf gradient", layer.name)
            )
    if layer.grad_check_error is not None:
        severity = _grade(layer.grad_check_error, limits.grad_check_tolerance)
        if severity:
            flags.append(
                Flag(
                    "grad_check",
                    severity,
                    f"autograd disagrees with finite differences at "
                    f"{layer.name}: max relative error {layer.grad_check_error:.2g} (a wrong "
                    "custom backward?)",
                    layer.name,
                )
            )
    return flags


def trend_flags(first_last: float | None, limits: Thresholds) -> list[Flag]:
    if first_last is None or not math.isfinite(first_last):
        return []
    flags = []
    severity = _grade(first_last, limits.vanishing_ratio, below=True)
    if severity:
        flags.append(
            Flag(
                "vanishing",
                severity,
                f"the error signal at the first layer is {first_last:.2g}x "
                "the one at the output layer",
            )
        )
    severity = _grade(first_last, limits.exploding_ratio)
    if severity:
        flags.append(
            Flag(
                "exploding",
                severity,
                f"the error signal at the first layer is {first_last:.3g}x "
                "the one at the output layer",
            )
        )
    return flags


def update_flags(layers: list[LayerReport], limits: Thresholds) -> list[Flag]:
    ratios = [
        x.update_ratio
        for x in layers
        if x.update_ratio is not None and math.isfinite(x.update_ratio) and x.update_ratio > 0
    ]
    if not ratios:
        return []
    median = statistics.median(ratios)
    severity = _grade(median, limits.update_ratio_high)
    if severity:
        return [
            Flag(
                "lr_too_high",
                severity,
                f"one optimizer step changes the weights by {median:.2g} of "
                "their norm (median over layers; ~1e-3 is healthy)",
            )
        ]
    if median < limits.update_ratio_low:
        return [
            Flag(
                "lr_too_low",
                "warning",
                f"one optimizer step changes the weights by only {median:.2g} "
                "of their norm (median over layers; ~1e-3 is healthy)",
            )
        ]
    return []


def curvature_flags(
    lr: float | None, lam: float | None, optimizer: str | None, momentum: float
) -> list[Flag]:
    """lr·λmax beyond 2(1+β) diverges for (heavy-ball) SGD on the local quadratic model."""
    if lr is None or lam is None or not math.isfinite(lam) or lam <= 0:
        return []
    edge = 2 * (1 + momentum)
    if lr * lam <= edge:
        return []
    sgd = optimizer in ("SGD",)
    message = (
        f"lr·λmax = {lr * lam:.3g} > {edge:g}: beyond the stability edge of "
        f"{'SGD' if sgd else optimizer + ' (a heuristic for adaptive optimizers)'}"
    )
    return [Flag("lr_too_high", "error" if sgd else "warning", message)]


def dominant_activation(layers: list[LayerReport]) -> str | None:
    kinds = [x.activation.kind for x in layers if x.activation is not None]
    return statistics.mode(kinds) if kinds else None


def _typical_sigma_w2(layers: list[LayerReport]) -> float | None:
    values = [x.sigma_w2 for x in layers[1:-1] or layers if x.sigma_w2 is not None]
    return statistics.median(values) if values else None


def verdict(report: Report) -> str:
    """A few sentences: what is wrong, the likely cause, and the config keys that fix it."""
    names = {f.name for f in report.flags}
    parts: list[str] = []
    activation = dominant_activation(report.layers)
    trend = report.depth_trend
    factor = trend.factor_per_layer
    sw2 = _typical_sigma_w2(report.layers)
    if report.nonfinite is not None:
        parts.append(_nonfinite_sentence(report.nonfinite))
    dead = [f for f in report.flags if f.name == "dead"]
    if dead:
        layers = ", ".join(sorted({f.layer or "?" for f in dead}))
        parts.append(
            f"Dead units after {layers}: their local derivative is 0 for every sample, so no "
            "gradient reaches the layers below. Likely causes: strongly negative biases, a too high "
            "learning rate that pushed the units dead, or a bad init. Remedies: lower optimizer.lr, "
            "model.activation=leaky_relu (or gelu), model.norm=batchnorm, re-initialise "
            "(model.init=kaiming_normal)."
        )
    if "vanishing" in names and not dead:
        shrink = (
            f"about {1 / factor:.1f}x per layer" if factor and factor > 0 else "toward the input"
        )
        if activation in SQUASHING:
            parts.append(
                f"The error signal shrinks {shrink} (the {activation} derivative is small: σ' ≤ 1/4 "
                "for sigmoid, so χ = σ_w²·E[φ'²] ≤ σ_w²/16). Use ReLU/GELU with Kaiming init "
                "(model.activation=relu model.init=kaiming_normal), add normalization "
                "(model.norm=batchnorm) or residual connections (model.residual=true)."
            )
        elif activation in RELU_FAMILY and sw2 is not None and sw2 < 1.7:
            parts.append(
                f"The error signal shrinks {shrink}: the init is too small for {activation} "
                f"(σ_w² ≈ {sw2:.2g}, so χ = σ_w²/2 ≈ {sw2 / 2:.2g} < 1). Use model.init=kaiming_normal "
                "(σ_w² = 2), or add normalization (model.norm=batchnorm) or residual connections "
                "(model.residual=true)."
            )
        else:
            parts.append(
                f"The error signal shrinks {shrink}. Add normalization (model.norm=batchnorm) or "
                "residual connections (model.residual=true), or use fewer layers."
            )
    if "exploding" in names:
        grow = f"about {factor:.2f}x per layer" if factor else "toward the input"
        cause = (
            f" (σ_w² ≈ {sw2:.2g} > 2 for {activation}, so χ > 1)"
            if sw2 and activation in RELU_FAMILY and sw2 > 2.3
            else ""
        )
        parts.append(
            f"The error signal grows {grow}{cause}: the init is too large. Lower model.init_gain "
            "(or use model.init=kaiming_normal with init_gain=1), clip gradients "
            "(trainer.grad_clip.max_norm=1.0) and/or add normalization (model.norm=batchnorm)."
        )
    if "saturated" in names:
        parts.append(
            "Saturated units pass almost no gradient: lower model.init_gain, normalise the inputs "
            "(data.normalize=true), add model.norm=batchnorm, or use model.activation=relu."
        )
    if "grad_check" in names:
        parts.append(
            "Autograd disagrees with finite differences: a custom autograd.Function has a wrong "
            "backward (see grad_check_error per layer)."
        )
    if "no_grad" in names:
        stuck = [f.message for f in report.flags if f.name == "no_grad"]
        parts.append(
            "Some parameters do not train: "
            + "; ".join(stuck[:4])
            + ("; ..." if len(stuck) > 4 else ".")
        )
    if "lr_too_high" in names:
        parts.append(
            "The learning rate looks too high: lower optimizer.lr (e.g. by 10x) and/or clip "
            "gradients (trainer.grad_clip.max_norm=1.0)."
        )
    if "lr_too_low" in names and names & {"vanishing", "dead", "saturated"}:
        parts.append(
            "The weights barely move because the gradient reaching them is tiny (above): fix "
            "that first rather than raising optimizer.lr, which would make the layers near the "
            "output move too fast."
        )
    elif "lr_too_low" in names:
        parts.append(
            "The learning rate looks too low for these weights: raise optimizer.lr (e.g. by 10x)."
        )
    if not parts:
        expected = [x.expected_factor for x in report.layers if x.expected_factor is not None]
        theory = f" (mean-field predicts {statistics.median(expected):.2f})" if expected else ""
        typical = f"; per-layer factor ≈ {factor:.2f}{theory}" if factor else ""
        parts.append(
            f"Healthy: the error signal reaches every layer without vanishing or exploding{typical}."
        )
    return " ".join(parts)


def _nonfinite_sentence(source: NonfiniteSource) -> str:
    return (
        f"The first NaN/Inf appeared in {source.module} during the {source.pass_} pass of batch "
        f"{source.batch} ({source.detail}). Remedies: lower optimizer.lr, clip gradients "
        "(trainer.grad_clip.max_norm=1.0), normalise the inputs (data.normalize=true), train in "
        "precision 32, and check that pass's operation (log/sqrt/division of values near 0)."
    )
