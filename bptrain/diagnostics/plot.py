"""PNG plots of weight-gradient and error-signal norms per layer (matplotlib, optional extra).

matplotlib is imported only here and only when a plot is asked for, so the CLI
starts fast and ``bptrain[plot]`` stays optional.

Every plot is on a log y axis with whole-decade limits, and marks the reference the
flags compare with: the output layer's ‖∂L/∂out‖ (a dotted line, ``gid="reference"``)
and the healthy band around it (``gid="healthy-band"``, the vanishing/exploding warning
thresholds). A sweep writes one figure with every variant overlaid and labelled, plus
one file per variant titled by it, all on one shared y range so they compare by eye.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bptrain.diagnostics.flags import Reference, reference
from bptrain.diagnostics.report import Report
from bptrain.errors import UserError

YLim = tuple[float, float]


def _positive(values: list[float | None]) -> list[float]:
    return [v if v is not None and math.isfinite(v) and v > 0 else math.nan for v in values]


def require_matplotlib() -> Any:
    """pyplot with the file-only backend; a clear error when matplotlib is missing.

    Commands call it before their work when --plot is given, so a missing matplotlib fails in a
    second, not after the whole analysis.
    """
    try:  # imported here: matplotlib is an optional extra and slow to import
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "--plot needs matplotlib: pip install matplotlib (or pip install 'bptrain[plot]')"
        ) from None
    return plt


def plot_target(path: Path) -> Path:
    """A --plot path checked before the work it plots: ``.png`` added when it has no suffix (the
    file matplotlib writes, and the name printed), a format matplotlib writes, a folder that can
    exist. Call after ``require_matplotlib``."""
    from matplotlib.backend_bases import FigureCanvasBase

    if not path.suffix:
        path = path.with_suffix(".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        raise UserError(
            f"--plot {path}: matplotlib cannot write {path.suffix} files; use one of "
            f"{', '.join('.' + f for f in sorted(formats))} (e.g. {path.with_suffix('.png')})."
        )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--plot {path}: {parent} is a file, not a folder.")
    return path


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (PNG, 120 dpi, creating the folder) and close a figure; every --plot ends here."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as err:  # a full disk, a read-only folder, a format
        raise UserError(f"cannot write {path}: {err}") from None
    finally:
        plt.close(fig)
    return path


def decade_limits(reports: Sequence[Report]) -> YLim:
    """Whole decades covering every plotted norm and every reference band: one y range for all."""
    values = [
        v
        for report in reports
        for layer in report.layers
        for v in _positive([layer.grad_norm, layer.signal_norm])
        if not math.isnan(v)
    ]
    for report in reports:
        ref = reference(report.layers)
        if ref is not None:
            values += [ref.low, ref.high]
    if not values:
        return (1e-8, 1e2)
    low, high = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    return (10.0**low, 10.0 ** max(high, low + 1))


def variant_paths(path: Path, count: int) -> list[Path]:
    """``flow.png`` -> ``flow-0.png``, ``flow-1.png``, ...: one file per sweep variant."""
    return [path.with_name(f"{path.stem}-{i}{path.suffix or '.png'}") for i in range(count)]


def _log_axis(ax: Any, ylim: YLim) -> None:
    from matplotlib.ticker import LogLocator

    ax.set_yscale("log")
    ax.set_ylim(*ylim)
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=30))  # a tick at every decade
    ax.grid(True, which="major", alpha=0.3)


def _layer_axis(ax: Any, reports: Sequence[Report]) -> None:
    """Layer names on x when every report has the same layers, else the layer index."""
    names = [x.name for x in reports[0].layers]
    if all([x.name for x in r.layers] == names for r in reports):
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_xlabel("layer (input → output)")
    else:
        ax.set_xlabel("layer index (input → output)")


def _mark_reference(ax: Any, ref: Reference | None, color: str, band: bool) -> None:
    if ref is None:
        return
    if band:
        ax.axhspan(
            ref.low,
            ref.high,
            color="tab:green",
            alpha=0.08,
            gid="healthy-band",
            label=f"healthy band (flags outside): {ref.low:.2g} … {ref.high:.2g}",
        )
    ax.axhline(
        ref.signal,
        color=color,
        linestyle=":",
        linewidth=1.2,
        gid="reference",
        label=f"reference: output layer's ‖∂L/∂out‖ = {ref.signal:.2g}" if band else None,
    )


def flow_figure(report: Report, *, title: str, ylim: YLim | None = None) -> Any:
    """One report: ‖∇W‖ and ‖∂L/∂out‖ per layer, the reference line and the healthy band."""
    plt = require_matplotlib()
    steps = range(len(report.layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(report.layers) + 2), 4.5))
    ax.plot(
        steps, _positive([x.grad_norm for x in report.layers]), "o-", label="‖∇W‖ (weight gradient)"
    )
    ax.plot(
        steps,
        _positive([x.signal_norm for x in report.layers]),
        "s-",
        label="‖∂L/∂out‖ (error signal)",
    )
    _mark_reference(ax, reference(report.layers), "tab:green", band=True)
    _log_axis(ax, ylim or decade_limits([report]))
    _layer_axis(ax, [report])
    ax.set_ylabel("norm (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def sweep_figure(results: Sequence[tuple[str, Report]], *, ylim: YLim | None = None) -> Any:
    """Every variant overlaid and labelled: the error signal on top, ‖∇W‖ below, one y range."""
    plt = require_matplotlib()
    reports = [r for _, r in results]
    depth = max(len(r.layers) for r in reports)
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, sharey=True, figsize=(max(7.0, 0.45 * depth + 3), 8.0)
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, report) in enumerate(results):
        color = colors[i % len(colors)]
        steps = range(len(report.layers))
        top.plot(
            steps, _positive([x.signal_norm for x in report.layers]), "s-", color=color, label=label
        )
        bottom.plot(
            steps, _positive([x.grad_norm for x in report.layers]), "o-", color=color, label=label
        )
        _mark_reference(top, reference(report.layers), color, band=False)
    for ax in (top, bottom):
        _log_axis(ax, ylim or decade_limits(reports))
    _layer_axis(bottom, reports)
    top.set_ylabel("‖∂L/∂out‖ (error signal)")
    bottom.set_ylabel("‖∇W‖ (weight gradient)")
    top.set_title(
        "grad-inspect sweep: error signal per layer\n"
        "dotted: each variant's output-layer signal, the reference of the vanishing/exploding flags",
        fontsize=10,
    )
    top.legend(fontsize=8)
    return fig


def plot(
    report: Report,
    path: Path | str,
    *,
    title: str = "grad-inspect: gradient flow per layer",
    ylim: YLim | None = None,
) -> Path:
    """Write ‖∇W‖ and ‖∂L/∂out‖ per layer (log scale, input to output) to ``path``."""
    return save_figure(flow_figure(report, title=title, ylim=ylim), Path(path))


def plot_sweep(results: Sequence[tuple[str, Report]], path: Path | str) -> list[Path]:
    """The overlay at ``path``, then one file per variant (``path-0.png``, ...): all one y range."""
    path = Path(path)
    ylim = decade_limits([r for _, r in results])
    written = [save_figure(sweep_figure(results, ylim=ylim), path)]
    for (label, report), each in zip(results, variant_paths(path, len(results)), strict=True):
        written.append(plot(report, each, title=f"grad-inspect: {label}", ylim=ylim))
    return written
