"""Terminal output of grad-inspect: one rich table per report, one side-by-side table per sweep.

The signal column carries a bar on a fixed log scale (``BAR_DECADES``, the same
for every table, run and sweep column) because the error signal spans orders of
magnitude when it vanishes or explodes: a linear bar would show one full bar and
nothing else, and a scale stretched min-to-max per table would draw 0.10 as one
cell and 0.12 as ten in a healthy net. The bar's empty part marks the reference
the flags compare with (the output layer's signal) and the healthy band around it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bptrain.diagnostics.flags import Reference, reference
from bptrain.diagnostics.report import Flag, Report

BAR_DECADES = (-8, 2)
"""The bars' fixed scale: one cell per decade from 1e-8 to 1e2, the same in every table and run,
so equal norms draw equal bars (0.10 and 0.12 both end in the decade of 0.1)."""
BAR_WIDTH = BAR_DECADES[1] - BAR_DECADES[0]
EIGHTHS = " ▏▎▍▌▋▊▉"
BAR_CAPTION = (
    "‖∂L/∂out‖ bars: log scale, one cell per decade from 1e-8 to 1e2 (the same in every table); "
    "│ the output layer's signal, ░ the healthy band around it (the vanishing/exploding "
    "thresholds), ▸ off the scale"
)


def fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _track(ref: Reference | None) -> list[str]:
    """The empty bar: ``│`` in the reference's decade, ``░`` over the healthy band."""
    low = BAR_DECADES[0]
    track = [" "] * BAR_WIDTH
    if ref is None:
        return track
    band = (math.log10(ref.low), math.log10(ref.high))
    for cell in range(BAR_WIDTH):
        if band[0] <= low + cell + 0.5 <= band[1]:
            track[cell] = "░"
    cell = math.floor(math.log10(ref.signal)) - low
    if 0 <= cell < BAR_WIDTH:
        track[cell] = "│"
    return track


def log_bar(value: float | None, ref: Reference | None = None) -> Text:
    """A bar ending at log10(value) on the fixed scale of ``BAR_DECADES``, eighth-cell resolution.

    Green when the value is inside the reference's healthy band, yellow below it (vanishing),
    red above it (exploding). ``·`` is a zero signal, ``?`` a non-finite one, ``◂`` one below 1e-8.
    """
    if value is None:
        return Text("")
    if not math.isfinite(value):
        return Text("?", style="bold red")
    cells = _track(ref)
    fill = math.log10(value) - BAR_DECADES[0] if value > 0 else -math.inf
    if value <= 0:
        cells[0] = "·"
    elif fill <= 0:
        cells[0] = "◂"
    elif fill >= BAR_WIDTH:
        cells = ["█"] * (BAR_WIDTH - 1) + ["▸"]
    else:
        full, part = int(fill), round((fill - int(fill)) * 8)
        cells[:full] = ["█"] * full
        if part:
            cells[full] = "█" if part == 8 else EIGHTHS[part]
    style = ""
    if ref is not None and value > 0:
        style = "green" if ref.low <= value <= ref.high else "yellow" if value < ref.low else "red"
    return Text("".join(cells), style=style)


def _signal_cell(value: float | None, ref: Reference | None, spec: str) -> Text:
    return Text.assemble(fmt(value, spec) + " ", log_bar(value, ref))


def _flag_text(flags: Sequence[Flag]) -> Text:
    text = Text()
    for i, flag in enumerate(flags):
        if i:
            text.append(" ")
        text.append(flag.name, style="bold red" if flag.severity == "error" else "yellow")
    return text


def report_table(report: Report, title: str = "grad-inspect") -> Table:
    """Forward order, one row per parameterised layer; compact enough for an 80-column terminal."""
    table = Table(
        title=title,
        title_justify="left",
        caption=BAR_CAPTION,
        caption_justify="left",
        show_lines=False,
        pad_edge=False,
    )
    table.add_column("layer", no_wrap=True)
    for column in ("‖∇W‖", "∇W/W"):
        table.add_column(column, justify="right")
    table.add_column("‖∂L/∂out‖  1e-8 … 1e2", no_wrap=True)
    for column in ("factor", "√χ", "σ_w²", "dead", "ΔW/W"):
        table.add_column(column, justify="right")
    if report.options.get("check_gradients"):
        table.add_column("fd err", justify="right")
    table.add_column("flags")
    ref = reference(report.layers)
    for layer in report.layers:
        health = layer.activation
        dead = fmt(health.dead_fraction, ".0%") if health else "-"
        if health and health.saturated_fraction:
            dead += f" sat {health.saturated_fraction:.0%}"
        row: list[str | Text] = [
            layer.name,
            fmt(layer.grad_norm, ".2g"),
            fmt(layer.grad_to_weight, ".1e"),
            _signal_cell(layer.signal_norm, ref, ".1e"),
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
    for name, result in (
        ("gradient noise", report.gradient_tests),
        ("curvature", report.curvature),
    ):
        if result and "skipped" in result:
            lines.append(f"{name}: not computed: {result['skipped']}")
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


SWEEP_COLUMN = BAR_WIDTH + 8 + 3
"""Width of one configuration's column: its bar with the value in front, padding and border."""


def sweep_tables(
    reports: Sequence[tuple[str, Report]], width: int, title: str = "grad-inspect sweep"
) -> list[Table]:
    """The sweep table, or when its columns do not fit ``width`` the configurations in groups
    that do, each with the layer column: a terminal cuts a wider table off at its right edge,
    so at 80 columns the fourth configuration of a 2x2 sweep would not be seen at all."""
    names = {x.name for _, report in reports for x in report.layers}
    layer_column = max(len("factor/layer"), *(len(name) for name in names)) + 3
    fits = max(1, (width - layer_column - 1) // SWEEP_COLUMN)
    per_table = -(-len(reports) // -(-len(reports) // fits))  # balanced: 2+2 rather than 3+1
    groups = [reports[i : i + per_table] for i in range(0, len(reports), per_table)]
    if len(groups) == 1:
        return [sweep_table(reports, title)]
    return [
        sweep_table(group, f"{title} ({k + 1}/{len(groups)})", caption=k == len(groups) - 1)
        for k, group in enumerate(groups)
    ]


def sweep_table(
    reports: Sequence[tuple[str, Report]], title: str = "grad-inspect sweep", caption: bool = True
) -> Table:
    """Layers as rows, one column per configuration: the signal norm (log bar) side by side.

    Every column draws its bars on the same fixed scale, each with its own reference; a label
    folds between its ``key=value`` parts rather than ending in an ellipsis.
    """
    table = Table(
        title=title,
        title_justify="left",
        caption=BAR_CAPTION if caption else None,
        caption_justify="left",
    )
    table.add_column("layer", no_wrap=True)
    for label, _ in reports:
        # Text, not a str: a value such as [4,4] or [bold] must not be read as rich markup
        table.add_column(Text(label), justify="left", overflow="fold", min_width=BAR_WIDTH + 8)
    names: list[str] = []
    for _, report in reports:
        names.extend(x.name for x in report.layers if x.name not in names)
    cells: dict[tuple[int, str], Text] = {}
    for i, (_, report) in enumerate(reports):
        ref = reference(report.layers)
        for layer in report.layers:
            cells[(i, layer.name)] = _signal_cell(layer.signal_norm, ref, ".1e")
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
