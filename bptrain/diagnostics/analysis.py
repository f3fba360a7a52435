"""The grad-inspect analysis: run N batches forward and backward, never step, and explain the gradients.

``inspect_gradients`` owns the orchestration: it works on a deep copy of the
model (the caller's weights, buffers and ``.grad`` stay untouched), records the
error signal per layer, audits parameters that do not train, applies the
mean-field theory where the architecture allows it, runs the optional checks
(finite differences, gradient noise, curvature, recurrent signal through time),
takes one real optimizer step on the copy to measure update ratios, and turns
all of that into flags and a verdict.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bptrain.diagnostics import curvature as curvature_mod
from bptrain.diagnostics import flags as flags_mod
from bptrain.diagnostics import gradcheck, noise, recurrent
from bptrain.diagnostics.batches import Batch, LossFn, batch_size_of, call_model
from bptrain.diagnostics.flags import Thresholds
from bptrain.diagnostics.recording import Recorder, is_activation
from bptrain.diagnostics.report import (
    ActivationHealth,
    DepthTrend,
    Flag,
    LayerReport,
    NonfiniteSource,
    ParamAudit,
    Report,
)
from bptrain.diagnostics.theory import THEORY_LAYERS, chi, guess_init, sigma_w2
from bptrain.grads import (
    GRAD_NORM,
    UPDATE_RATIO,
    WEIGHT_NORM,
    GradFlowMonitor,
    layer_parameters,
    norm_float64,
    to_floats,
)

MakeOptimizer = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass(frozen=True)
class InspectOptions:
    """What to compute beyond the always-on per-layer analysis."""

    check_gradients: bool = False
    noise: bool = False
    curvature: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    grad_check_entries: int = 4
    """Parameter entries checked per parameter tensor by finite differences."""
    noise_max_samples: int = 256
    power_iterations: int = 50
    power_tolerance: float = 1e-4
    hutchinson_samples: int = 10
    seed: int = 0


def run_batches(
    work: nn.Module, loss_fn: LossFn, batches: Sequence[Batch]
) -> tuple[Recorder, list[float]]:
    """Forward + backward every batch (gradients accumulate), with the recorder's hooks on."""
    recorder = Recorder(work)
    losses: list[float] = []
    try:
        for index, (x, y) in enumerate(batches):
            recorder.start_batch(index)
            loss = loss_fn(call_model(work, x), y)
            value = float(loss.detach())
            if recorder.nonfinite is None and not math.isfinite(value):
                recorder.nonfinite_from_loss(index, value)
            if loss.requires_grad:
                loss.backward()
            recorder.end_batch()
            losses.append(value)
    finally:
        recorder.close()
    return recorder, losses


def audit(name: str, param: nn.Parameter, in_optimizer: set[int] | None) -> ParamAudit:
    """Classify why a parameter would not train (or ``ok``)."""
    status = "ok"
    if not param.requires_grad:
        status = "frozen"
    elif param.grad is None:
        status = "grad_none"
    elif not bool(torch.isfinite(param.grad).all()):
        status = "nonfinite"
    elif in_optimizer is not None and id(param) not in in_optimizer:
        status = "not_in_optimizer"
    elif not bool(param.grad.any()):
        status = "grad_zero"
    return ParamAudit(name=name, shape=list(param.shape), status=status)  # type: ignore[arg-type]


def following(recorder: Recorder, producer: str) -> str | None:
    """The module that consumed ``producer``'s output first (by tensor identity), if any."""
    for path in recorder.order:
        if recorder.producer.get(path) == producer:
            return path
    return None


def build_layers(
    work: nn.Module,
    monitor: GradFlowMonitor,
    recorder: Recorder,
    n_batches: int,
    in_optimizer: set[int] | None,
) -> list[LayerReport]:
    groups = layer_parameters(work)
    stats = to_floats({**monitor.grad_stats(), **monitor.weight_norms()})
    order = [p for p in recorder.order if p in groups] + [
        p for p in groups if p not in recorder.order
    ]
    layers: list[LayerReport] = []
    for index, path in enumerate(order):
        module = recorder.modules.get(path) or work.get_submodule("" if path == "(root)" else path)
        params = groups[path]
        grad_norm = stats[GRAD_NORM + path]
        weight_norm = stats[WEIGHT_NORM + path]
        moments = recorder.output_moments.get(path)
        scale = sigma_w2(module)
        layers.append(
            LayerReport(
                name=path,
                kind=type(module).__name__,
                index=index,
                grad_norm=grad_norm,
                weight_norm=weight_norm,
                grad_to_weight=grad_norm / weight_norm if weight_norm > 0 else float("nan"),
                signal_norm=recorder.signal_norm(path, n_batches),
                signal_factor=None,
                output_mean=moments.mean() if moments else None,
                output_std=moments.std() if moments else None,
                sigma_w2=scale,
                init_guess=guess_init(module, scale) if scale is not None else None,
                params=[audit(name, p, in_optimizer) for name, p in params],
            )
        )
    add_factors_and_theory(layers, recorder)
    return layers


def pass_through(recorder: Recorder, start: str) -> tuple[str, float]:
    """Follow Dropout/Identity consumers after ``start``: the last module reached, and their χ multiplier.

    Inverted dropout keeps a unit with probability 1−p and scales it by 1/(1−p), so in train mode
    it multiplies E‖δ‖² by 1/(1−p); in eval mode (and Identity) it is the identity.
    """
    current, multiplier = start, 1.0
    while True:
        nxt = following(recorder, current)
        module = recorder.modules.get(nxt or "")
        if isinstance(module, nn.Dropout):
            multiplier *= 1.0 / (1.0 - module.p) if module.training and module.p < 1 else 1.0
        elif not isinstance(module, nn.Identity):
            return current, multiplier
        current = nxt or current


def add_factors_and_theory(layers: list[LayerReport], recorder: Recorder) -> None:
    """signal[l]/signal[l+1] and, for Linear -> activation -> [dropout] -> Linear chains, the predicted √χ."""
    for layer, nxt in itertools.pairwise(layers):
        if layer.signal_norm is not None and nxt.signal_norm:
            layer.signal_factor = layer.signal_norm / nxt.signal_norm
    for position, layer in enumerate(layers):
        act_path = following(recorder, layer.name)
        act = recorder.modules.get(act_path or "")
        if act_path is None or act is None or not is_activation(act):
            layer.theory_note = "no elementwise activation consumes this layer's output"
            continue
        health = recorder.health(act_path)
        if health is not None:
            layer.activation = ActivationHealth(module=act_path, kind=type(act).__name__, **health)  # type: ignore[arg-type]
        feeder, multiplier = pass_through(recorder, act_path)
        nxt = layers[position + 1] if position + 1 < len(layers) else None
        if nxt is None or recorder.producer.get(nxt.name) != feeder or nxt.sigma_w2 is None:
            layer.theory_note = (
                "the next layer is not a Linear/Conv fed directly by this activation"
            )
            continue
        if not isinstance(recorder.modules.get(nxt.name), THEORY_LAYERS) or health is None:
            continue
        derivative_sq = health["local_derivative_sq"]
        if derivative_sq is None:
            continue
        layer.chi = chi(nxt.sigma_w2, derivative_sq) * multiplier
        layer.expected_factor = math.sqrt(layer.chi)


def depth_trend(layers: list[LayerReport]) -> DepthTrend:
    points = [
        (x.index, math.log(x.signal_norm))
        for x in layers
        if x.signal_norm is not None and math.isfinite(x.signal_norm) and x.signal_norm > 0
    ]
    factor = None
    if len(points) >= 2:
        mean_i = statistics.fmean(i for i, _ in points)
        mean_s = statistics.fmean(s for _, s in points)
        slope = sum((i - mean_i) * (s - mean_s) for i, s in points) / sum(
            (i - mean_i) ** 2 for i, _ in points
        )
        factor = math.exp(-slope)
    signals = [x.signal_norm for x in layers if x.signal_norm is not None]
    first_last = None
    if len(signals) >= 2 and signals[-1] and math.isfinite(signals[-1]):
        first_last = signals[0] / signals[-1]
    factors = [
        x.signal_factor
        for x in layers
        if x.signal_factor is not None and math.isfinite(x.signal_factor)
    ]
    return DepthTrend(
        factor_per_layer=factor,
        median_factor=statistics.median(factors) if factors else None,
        first_last_ratio=first_last,
    )


def optimizer_info(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    group = optimizer.param_groups[0]
    momentum = group.get("momentum", 0.0) or 0.0
    return {
        "name": type(optimizer).__name__,
        "lr": float(group["lr"]),
        "momentum": float(momentum),
        "weight_decay": float(group.get("weight_decay", 0.0) or 0.0),
    }


def step_update_ratios(
    work: nn.Module,
    monitor: GradFlowMonitor,
    optimizer: torch.optim.Optimizer,
    layers: list[LayerReport],
    loss_fn: LossFn,
    batch: Batch,
) -> None:
    """One real step on the (copied) model with the averaged gradient: Adam, momentum and decay all count."""
    monitor.snapshot_weights()

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = loss_fn(call_model(work, batch[0]), batch[1])
        loss.backward()
        return loss

    with torch.enable_grad():
        if isinstance(optimizer, torch.optim.LBFGS):
            optimizer.step(closure)
        else:
            optimizer.step()
    ratios = to_floats(monitor.update_ratios())
    for layer in layers:  # layer.weight_norm is ‖W‖ before this step
        layer.update_ratio = ratios[UPDATE_RATIO + layer.name] if layer.weight_norm > 0 else None


def inspect_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    *,
    make_optimizer: MakeOptimizer | None = None,
    options: InspectOptions | None = None,
) -> Report:
    """Analyse backpropagation through ``model`` on ``batches`` without changing ``model``."""
    options = options or InspectOptions()
    batches = list(batches)
    if not batches:
        raise ValueError("grad-inspect needs at least one (x, y) batch")
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.grad = None
    optimizer = make_optimizer(work) if make_optimizer is not None else None
    in_optimizer = (
        {id(p) for g in optimizer.param_groups for p in g["params"]}
        if optimizer is not None
        else None
    )
    torch.manual_seed(options.seed)
    recorder, losses = run_batches(work, loss_fn, batches)
    for p in work.parameters():
        if p.grad is not None:
            p.grad.div_(len(batches))
    monitor = GradFlowMonitor(work, float64=True, include_frozen=True)
    layers = build_layers(work, monitor, recorder, len(batches), in_optimizer)
    unique_grads = list({id(p): p.grad for p in work.parameters() if p.grad is not None}.values())
    report = Report(
        layers=layers,
        global_grad_norm=norm_float64(unique_grads),
        loss=statistics.fmean(losses),
        batches=len(batches),
        batch_size=batch_size_of(batches[0][0]),
        depth_trend=depth_trend(layers),
        flags=[],
        verdict="",
        options={
            "check_gradients": options.check_gradients,
            "noise": options.noise,
            "curvature": options.curvature,
        },
    )
    if recorder.nonfinite is not None:
        nf = recorder.nonfinite
        report.nonfinite = NonfiniteSource(
            module=nf.module, pass_=nf.pass_, batch=nf.batch, detail=nf.detail
        )  # type: ignore[arg-type]
    if optimizer is not None:
        report.optimizer = optimizer_info(optimizer)
    run_options(report, model, loss_fn, batches, options)
    if optimizer is not None and report.nonfinite is None:
        step_update_ratios(work, monitor, optimizer, layers, loss_fn, batches[0])
    report.flags = collect_flags(report, options.thresholds)
    for layer in layers:
        layer.flags = [f for f in report.flags if f.layer == layer.name]
    report.verdict = flags_mod.verdict(report)
    return report


def run_options(
    report: Report, model: nn.Module, loss_fn: LossFn, batches: list[Batch], options: InspectOptions
) -> None:
    """The optional analyses, each on its own copy of the caller's model (pristine buffers, no grads)."""
    if options.check_gradients:
        errors = gradcheck.finite_difference_errors(
            model,
            loss_fn,
            batches[0],
            entries_per_param=options.grad_check_entries,
            seed=options.seed,
        )
        report.grad_check_error = errors
        for layer in report.layers:
            layer.grad_check_error = errors.get(layer.name)
    if options.noise:
        report.gradient_tests = noise.gradient_tests(
            model, loss_fn, batches[0], max_samples=options.noise_max_samples
        )
    if options.curvature:
        lr = report.optimizer["lr"] if report.optimizer else None
        report.curvature = curvature_mod.analyse(
            model,
            loss_fn,
            batches,
            iterations=options.power_iterations,
            tolerance=options.power_tolerance,
            hutchinson_samples=options.hutchinson_samples,
            seed=options.seed,
            lr=lr,
            optimizer=report.optimizer["name"] if report.optimizer else None,
        )
        report.hessian_max_eigenvalue = report.curvature.get("hessian_max_eigenvalue")
    if any(isinstance(m, nn.RNNBase) for m in model.modules()):
        report.recurrent = recurrent.signal_through_time(model, loss_fn, batches[0])


def collect_flags(report: Report, limits: Thresholds) -> list[Flag]:
    layers = report.layers
    signals = [x.signal_norm for x in layers if x.signal_norm is not None]
    last_signal = signals[-1] if signals else None
    found: list[Flag] = []
    if report.nonfinite is not None:
        nf = report.nonfinite
        found.append(
            Flag(
                "nonfinite",
                "error",
                f"first NaN/Inf in {nf.module} ({nf.pass_} pass, batch {nf.batch}): {nf.detail}",
                nf.module if nf.module in {x.name for x in layers} else None,
            )
        )
    for layer in layers:
        found.extend(flags_mod.layer_flags(layer, last_signal, limits))
    found.extend(flags_mod.trend_flags(report.depth_trend.first_last_ratio, limits))
    found.extend(flags_mod.update_flags(layers, limits))
    if report.curvature is not None and report.optimizer is not None:
        found.extend(
            flags_mod.curvature_flags(
                report.optimizer["lr"],
                report.hessian_max_eigenvalue,
                report.optimizer["name"],
                report.optimizer["momentum"],
            )
        )
    for rnn in report.recurrent or []:
        ratio = rnn.get("first_last_ratio")
        if isinstance(ratio, float) and math.isfinite(ratio):
            for flag in flags_mod.trend_flags(ratio, limits):
                found.append(
                    Flag(
                        flag.name,
                        flag.severity,
                        f"through time in {rnn['module']}: ‖∂L/∂h_1‖ is {ratio:.2g}x ‖∂L/∂h_T‖",
                        rnn["module"],
                    )
                )
    if report.gradient_tests and report.gradient_tests.get("batch_too_small"):
        pass  # informative, not a failure: the verdict and table say it
    return found
