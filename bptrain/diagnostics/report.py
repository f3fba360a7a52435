"""The grad-inspect report: its data model and its stable JSON encoding.

Everything the analysis finds lands in these dataclasses, so the terminal
table, the plot, the sweep table and the JSON file all read the same numbers.
``to_json_dict`` is the contract for ``--json``: key names are stable, floats
that are not finite become the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` (so strict JSON parsers accept the file and a missing value,
``null``, stays distinguishable from an overflow).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["warning", "error"]
SEVERITY_RANK: dict[str, int] = {"warning": 1, "error": 2}


@dataclass
class Flag:
    """One finding; ``layer`` is the module path, or None for a model-wide finding."""

    name: str
    severity: Severity
    message: str
    layer: str | None = None


@dataclass
class ActivationHealth:
    """How the nonlinearity right after a layer treats that layer's output."""

    module: str
    kind: str
    mean: float
    std: float
    local_derivative_sq: float
    """E[φ'(h)²] over the recorded pre-activations h: the activation's share of χ."""
    dead_fraction: float
    """Units whose local derivative is 0 for every recorded sample (no gradient passes)."""
    saturated_fraction: float | None
    """Bounded activations only: units near a bound (φ' < 1% of its maximum) on ≥ 90% of samples."""


@dataclass
class ParamAudit:
    """Why a parameter does not train, if it does not."""

    name: str
    shape: list[int]
    status: Literal["ok", "grad_none", "grad_zero", "frozen", "not_in_optimizer", "nonfinite"]


@dataclass
class LayerReport:
    """One parameterised module, in forward order."""

    name: str
    kind: str
    index: int
    grad_norm: float
    """‖∇θ‖ of the module's own parameters, for the loss averaged over the inspected batches."""
    weight_norm: float
    grad_to_weight: float
    signal_norm: float | None
    """RMS over batches of ‖∂L/∂(module output)‖: the backpropagated error signal."""
    signal_factor: float | None
    """signal[l] / signal[l+1]: how much the chain rule multiplies the signal crossing this layer."""
    output_mean: float | None
    output_std: float | None
    sigma_w2: float | None = None
    """fan_in · Var[W] of this module's weight: the init scale mean-field theory uses."""
    init_guess: str | None = None
    chi: float | None = None
    """Mean-field χ = σ_w²(next layer) · E[φ'(h)²]: predicted ratio of squared signal norms."""
    expected_factor: float | None = None
    """√χ: the predicted ``signal_factor``."""
    theory_note: str | None = None
    activation: ActivationHealth | None = None
    update_ratio: float | None = None
    """‖ΔW‖/‖W‖ of one real optimizer step (on a copy); around 1e-3 is healthy."""
    grad_check_error: float | None = None
    params: list[ParamAudit] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)


@dataclass
class DepthTrend:
    """How the error signal changes with depth, going backward from the output."""

    factor_per_layer: float | None
    """exp(−slope) of a least-squares fit of log(signal) over layer index: the typical per-layer factor."""
    median_factor: float | None
    first_last_ratio: float | None
    """signal[first layer] / signal[last layer]: total growth (>1) or decay (<1) toward the input."""


@dataclass
class NonfiniteSource:
    """Where the first NaN/Inf appeared."""

    module: str
    pass_: Literal["forward", "backward", "loss"]
    batch: int
    detail: str


@dataclass
class Report:
    """Everything grad-inspect found for one model and one set of batches."""

    layers: list[LayerReport]
    global_grad_norm: float
    loss: float
    batches: int
    batch_size: int
    depth_trend: DepthTrend
    flags: list[Flag]
    verdict: str
    optimizer: dict[str, Any] | None = None
    nonfinite: NonfiniteSource | None = None
    gradient_tests: dict[str, Any] | None = None
    hessian_max_eigenvalue: float | None = None
    curvature: dict[str, Any] | None = None
    grad_check_error: dict[str, float] | None = None
    recurrent: list[dict[str, Any]] | None = None
    options: dict[str, bool] = field(default_factory=dict)
    input_gradient: dict[str, Any] | None = (
        None  # per-sample ‖∂L/∂x‖, top features (input_gradients.py)
    )

    def worst_severity(self) -> Severity | None:
        ranked = sorted(self.flags, key=lambda f: SEVERITY_RANK[f.severity], reverse=True)
        return ranked[0].severity if ranked else None


def json_safe(value: Any) -> Any:
    """Encode non-finite floats as strings, recursively, so ``json.dumps(allow_nan=False)`` works."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k).rstrip("_"): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def to_json_dict(report: Report) -> dict[str, Any]:
    """The stable JSON form of a report (see docs/grad-inspect.md for the schema)."""
    data = asdict(report)
    if report.gradient_tests is None:
        data.pop("gradient_tests")
    if report.hessian_max_eigenvalue is None:
        data.pop("hessian_max_eigenvalue")
        data.pop("curvature")
    if report.grad_check_error is None:
        data.pop("grad_check_error")
    if report.input_gradient is None:
        data.pop("input_gradient")
    return json_safe(data)
