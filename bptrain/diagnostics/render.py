"""Terminal output of grad-inspect: one rich table per report, one side-by-side table per sweep.

The signal column carries a bar on a log scale (shared by all layers of a
table) because the error signal spans orders of magnitude when it vanishes or
explodes; a linear bar would show one full bar and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bptrain.diagnostics.report import Flag, Report

BAR_WIDTH = 10


def fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def log_bars(values: Sequence[float | None], width: int = BAR_WIDTH) -> list[str]:
    """Bars proportional to log10(value) between the smallest and largest positive finite value."""
    logs = [math.log10(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if not logs:
        return ["" for _ in values]
    low, high = min(logs), max(logs)
    span = high - low or 1.0
    bars = []
    for v in values:
        if v is None or not math.isfinite(v):
            bars.append("?" if v is not None else "")
        elif v <= 0:
            bars.append("·")
        else:
            bars.append("█" * max(1, round(1 + (width - 1) * (math.log10(v) - low) / span)))
    return bars


def _flag_text(flags: Sequence[Flag]) -> Text:
    text = Text()
    for i, flag in enumerate(flags):
        if i:
            text.append(" ")
        text.append(flag.name, style="bold red" if flag.severity == "error" else "yellow")
    return text


def report_table(report: Report, title: str = "grad-inspect") -> Table:
    """Forward order, one row per parameterised layer; compact enough for an 80-column terminal."""
    table = Table(title=title, title_justify="left", show_lines=False, pad_edge=False)
    table.add_column("layer", no_wrap=True)
    for column in ("‖∇W‖", "∇W/W"):
        table.add_column(column, justify="right")
    table.add_column("‖∂L/∂out‖ (log bar)", no_wrap=True)
    for column in ("factor", "√χ", "σ_w²", "dead", "ΔW/W"):
        table.add_column(column, justify="right")
    if report.options.get("check_gradients"):
        table.add_column("fd err", justify="right")
    table.add_column("flags")
    bars = log_bars([x.signal_norm for x in report.layers], width=BAR_WIDTH)
    for layer, bar in zip(report.layers, bars, strict=True):
        health = layer.activation
        dead = fmt(health.dead_fraction, ".0%") if health else "-"
        if health and health.saturated_fraction:
            dead += f" sat {health.saturated_fraction:.0%}"
        row: list[str | Text] = [
            layer.name,
            fmt(layer.grad_norm, ".2g"),
            fmt(layer.grad_to_weight, ".1e"),
            f"{fmt(layer.signal_norm, '.1e')} {bar}",
            fmt(layer.signal_factor, ".2f"),
            fmt(layer.expected_factor, ".2f"),
            fmt(layer.sigma_w2, ".2f"),
            dead,
            fmt(layer.update_ratio, ".0e"),
        ]
        if report.options.get("check_gradients"):
            row.append(fmt(layer.grad_check_error, ".0e"))
        row.append(_flag_text(layer.flags))
        table.add_row(*row)
    return table


def summary_lines(report: Report) -> list[str]:
    trend = report.depth_trend
    lines = [
        f"loss {fmt(report.loss)} over {report.batches} batch(es) of {report.batch_size}; "
        f"global ‖∇θ‖ = {fmt(report.global_grad_norm)}",
        f"depth trend: factor/layer (fit) {fmt(trend.factor_per_layer)}, median {fmt(trend.median_factor)}, "
        f"signal first/last {fmt(trend.first_last_ratio)}",
    ]
    if report.optimizer:
        lines.append(f"optimizer {report.optimizer['name']} lr={report.optimizer['lr']:g}")
    if report.gradient_tests and "norm_test" in report.gradient_tests:
        t = report.gradient_tests
        lines.append(
            f"gradient noise ({t['samples']} samples): norm test {fmt(t['norm_test'])}, inner product "
            f"{fmt(t['inner_product_test'])}, orthogonality {fmt(t['orthogonality_test'])}, GSNR "
            f"{fmt(t['gsnr'])}"
            + (
                f" -> batch too small; the norm test suggests batch_size ≈ "
                f"{t['suggested_batch_size']:.0f}"
                if t["batch_too_small"]
                else ""
            )
        )
    if report.curvature and "hessian_max_eigenvalue" in report.curvature:
        c = report.curvature
        extra = (
            f", lr·λmax = {fmt(c.get('lr_times_lambda_max'))} ({c.get('stability_note')})"
            if "lr_times_lambda_max" in c
            else ""
        )
        lines.append(
            f"curvature: λmax {fmt(c['hessian_max_eigenvalue'])}, tr(H) ≈ {fmt(c['hessian_trace'])}{extra}"
        )
    for rnn in report.recurrent or []:
        if "skipped" in rnn:
            lines.append(f"recurrent {rnn['module']}: {rnn['skipped']}")
        else:
            norms = rnn["signal_norm_through_time"]
            lines.append(
                f"recurrent {rnn['module']}: ‖∂L/∂h_t‖ t=1..{len(norms)}: {fmt(norms[0])} ... "
                f"{fmt(norms[-1])}; factor/step {fmt(rnn['factor_per_step'])}"
            )
    if report.input_gradient is not None:
        from bptrain.input_gradients import render_lines

        lines.extend(render_lines(report.input_gradient))
    return lines


def print_report(report: Report, console: Console, title: str = "grad-inspect") -> None:
    console.print(report_table(report, title))
    for line in summary_lines(report):
        console.print(line, highlight=False)
    for flag in report.flags:
        style = "bold red" if flag.severity == "error" else "yellow"
        console.print(Text(f"{flag.severity}: {flag.name}: {flag.message}", style=style))
    console.print(Text("verdict: ", style="bold") + Text(report.verdict))


def sweep_table(reports: Sequence[tuple[str, Report]], title: str = "grad-inspect sweep") -> Table:
    """Layers as rows, one column per configuration: the signal norm (log bar) side by side."""
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    for label, _ in reports:
        table.add_column(label, justify="left")
    names: list[str] = []
    for _, report in reports:
        names.extend(x.name for x in report.layers if x.name not in names)
    all_signals = [x.signal_norm for _, r in reports for x in r.layers]
    bars = iter(log_bars(all_signals, width=10))
    cells: dict[tuple[int, str], str] = {}
    for i, (_, report) in enumerate(reports):
        for layer in report.layers:
            cells[(i, layer.name)] = f"{fmt(layer.signal_norm, '8.1e')} {next(bars)}"
    for name in names:
        table.add_row(name, *(cells.get((i, name), "") for i in range(len(reports))))
    table.add_section()
    table.add_row("factor/layer", *(fmt(r.depth_trend.factor_per_layer) for _, r in reports))
    table.add_row("first/last", *(fmt(r.depth_trend.first_last_ratio) for _, r in reports))
    table.add_row("‖∇θ‖", *(fmt(r.global_grad_norm) for _, r in reports))
    table.add_row("flags", *(_flag_text(_unique(r.flags)) for _, r in reports))
    return table


def _unique(flags: Sequence[Flag]) -> list[Flag]:
    worst: dict[str, Flag] = {}
    for flag in flags:
        if flag.name not in worst or flag.severity == "error":
            worst[flag.name] = flag
    return list(worst.values())
