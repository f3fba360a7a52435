"""Inline SVG line charts and PNG heatmaps, drawn in plain Python (no matplotlib, no JavaScript library).

The report must open offline from a copied run directory, so every figure is
text (SVG) or a PNG embedded as a data URI; nothing is fetched. Heatmaps use a
log colour scale with the viridis colours (perceptually even, readable in grey
and by most colour-blind readers); ``colour`` is public so tests can map a
pixel back to the value it encodes.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from html import escape

# viridis at 9 evenly spaced points (matplotlib's table), linearly interpolated between them
_VIRIDIS = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 82, 139),
    (44, 114, 142),
    (33, 145, 140),
    (40, 174, 128),
    (94, 201, 98),
    (173, 220, 48),
    (253, 231, 37),
]
MISSING = (220, 220, 220)  # no gradient recorded for this layer at this step
NONFINITE = (255, 0, 255)  # NaN/Inf: not on the viridis scale, so it cannot be mistaken for a value
ZERO = (0, 0, 0)  # exactly zero (a dead layer): below any log scale

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
EVENT_COLOURS = {
    "nonfinite": "#d0006f",
    "skipped": "#d0006f",
    "clipped": "#ff7f0e",
    "interrupted": "#555555",
    "early_stopped": "#2ca02c",
}


def colour(t: float) -> tuple[int, int, int]:
    """The viridis colour at t in [0, 1] (0: dark purple, the smallest value; 1: yellow, the largest)."""
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return tuple(round(a[k] + (b[k] - a[k]) * f) for k in range(3))  # type: ignore[return-value]


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def png_data_uri(pixels: list[list[tuple[int, int, int]]]) -> str:
    """Encode rows of RGB pixels as a PNG data URI (8-bit RGB, no filter): a few lines of zlib."""
    height, width = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def fmt(value: float) -> str:
    """A short number for axes and tables: 3 significant digits, scientific when tiny or huge."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def _decade(exponent: float) -> str:
    if exponent == int(exponent):
        e = int(exponent)
        return {0: "1", 1: "10", 2: "100", -1: "0.1", -2: "0.01"}.get(e, f"1e{e}")
    return fmt(10.0**exponent)


# --------------------------------------------------------------------------- line charts


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    colour: str
    dash: str = ""
    width: float = 1.6
    markers: bool = False


@dataclass
class Chart:
    title: str
    series: list[Series] = field(default_factory=list)
    xlabel: str = "optimizer step"
    log_y: bool = False
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, label)
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (x, colour, text)


W, H = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 62, 12, 26, 36


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _downsample(points: list[tuple[float, float]], limit: int = 1500) -> list[tuple[float, float]]:
    """Bucket means when a series has more points than the chart has pixels."""
    if len(points) <= limit:
        return points
    size = len(points) / limit
    out = []
    for b in range(limit):
        chunk = points[int(b * size) : int((b + 1) * size)]
        if chunk:
            out.append(
                (sum(p[0] for p in chunk) / len(chunk), sum(p[1] for p in chunk) / len(chunk))
            )
    return out


def line_chart(chart: Chart) -> str:
    """One SVG chart; each series is a <path class="series" data-label=...> with a legend entry."""
    usable = [
        Series(s.label, _downsample(pts), s.colour, s.dash, s.width, s.markers)
        for s in chart.series
        if (
            pts := [
                (x, y)
                for x, y in s.points
                if math.isfinite(x) and math.isfinite(y) and (y > 0 or not chart.log_y)
            ]
        )
    ]
    xs = [x for s in usable for x, _ in s.points] + [m[0] for m in chart.marks]
    ys = [y for s in usable for _, y in s.points] + [
        y for y, _ in chart.hlines if y > 0 or not chart.log_y
    ]
    columns = 2 if max(len(s.label) for s in usable or [Series("", [], "")]) <= 32 else 1
    legend_rows = math.ceil(len(usable) / columns)
    height = H + 10 + 16 * legend_rows
    head = (
        f'<svg class="chart" viewBox="0 0 {W} {height}" width="{W}" height="{height}" '
        f'role="img" aria-label="{escape(chart.title)}">'
        f'<text class="chart-title" x="{LEFT}" y="16">{escape(chart.title)}</text>'
    )
    if not usable:
        return head + f'<text x="{LEFT}" y="{H / 2}" class="empty">no data</text></svg>'
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    tf = (lambda v: math.log10(v)) if chart.log_y else (lambda v: v)
    y0, y1 = tf(min(ys)), tf(max(ys))
    if y1 == y0:
        y0, y1 = (
            y0 - (1 if chart.log_y else abs(y0) * 0.1 + 1e-12),
            y1 + (1 if chart.log_y else abs(y1) * 0.1 + 1e-12),
        )
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return TOP + ph - (tf(y) - y0) / (y1 - y0) * ph

    parts = [head, f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/>']
    for y in _log_ticks(y0, y1) if chart.log_y else _nice_ticks(y0, y1):
        yy = py(y)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + pw}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
            f'<text class="tick" x="{LEFT - 4}" y="{yy + 3:.1f}" text-anchor="end">{fmt(y)}</text>'
        )
    for x in _nice_ticks(x0, x1):
        xx = px(x)
        parts.append(
            f'<line class="grid" x1="{xx:.1f}" x2="{xx:.1f}" y1="{TOP}" y2="{TOP + ph}"/>'
            f'<text class="tick" x="{xx:.1f}" y="{TOP + ph + 13}" text-anchor="middle">{fmt(x)}</text>'
        )
    parts.append(
        f'<text class="axis-label" x="{LEFT + pw / 2}" y="{TOP + ph + 28}" text-anchor="middle">{escape(chart.xlabel)}</text>'
    )
    for y, label in chart.hlines:
        if chart.log_y and y <= 0:
            continue
        yy = py(y)
        parts.append(
            f'<line class="hline" x1="{LEFT}" x2="{LEFT + pw}" y1="{yy:.1f}" y2="{yy:.1f}"><title>{escape(label)}</title></line>'
            f'<text class="tick" x="{LEFT + pw - 2}" y="{yy - 3:.1f}" text-anchor="end">{escape(label)}</text>'
        )
    for x, col, text in chart.marks:
        xx = px(x)
        parts.append(
            f'<line class="mark" x1="{xx:.1f}" x2="{xx:.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="{col}">'
            f"<title>{escape(text)}</title></line>"
        )
    for s in usable:
        d = " ".join(
            f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(s.points)
        )
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        parts.append(
            f'<path class="series" data-label="{escape(s.label)}" d="{d}" stroke="{s.colour}" '
            f'stroke-width="{s.width}"{dash} fill="none"><title>{escape(s.label)}</title></path>'
        )
        if s.markers or len(s.points) == 1:
            parts.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.2" fill="{s.colour}"><title>{escape(s.label)}: step {fmt(x)}, {fmt(y)}</title></circle>'
                for x, y in s.points
            )
    parts.extend(_legend(usable, columns, pw))
    parts.append("</svg>")
    return "".join(parts)


def _log_ticks(y0: float, y1: float) -> list[float]:
    """Ticks of a log axis spanning 10**y0 .. 10**y1: decades, else 1-2-5 steps, else plain ticks."""
    ticks = [10.0**e for e in range(math.ceil(y0), math.floor(y1) + 1)]
    if len(ticks) < 3:  # two decades or less: 1-2-5 ticks
        ticks = [
            m * 10.0**e
            for e in range(math.floor(y0), math.ceil(y1) + 1)
            for m in (1, 2, 5)
            if y0 <= math.log10(m * 10.0**e) <= y1
        ]
    if len(ticks) < 2:  # less than that: plain ticks between the ends
        ticks = [v for v in _nice_ticks(10**y0, 10**y1, 4) if v > 0]
    return ticks


def _legend(usable: list[Series], columns: int, plot_width: float) -> list[str]:
    """One legend entry per series under the plot, in ``columns`` columns."""
    items = []
    for i, s in enumerate(usable):
        lx, ly = LEFT + (i % columns) * (plot_width / 2), H + 8 + 16 * (i // columns)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        items.append(
            f'<g class="legend-item" data-label="{escape(s.label)}">'
            f'<line x1="{lx:.0f}" x2="{lx + 22:.0f}" y1="{ly - 4}" y2="{ly - 4}" stroke="{s.colour}" stroke-width="2.5"{dash}/>'
            f'<text x="{lx + 27:.0f}" y="{ly}">{escape(s.label)}</text></g>'
        )
    return items


# --------------------------------------------------------------------------- heatmaps


@dataclass
class Heatmap:
    """A layer x step matrix (rows: layers in forward order) on a log colour scale."""

    title: str
    layers: list[str]
    steps: list[int]
    values: list[list[float]]  # values[step_index][layer_index]
    marks: list[tuple[int, str, str]] = field(default_factory=list)  # (step, colour, text)
    quantity: str = "value"  # what the hover read-out calls a cell's value
    log_range: tuple[float, float] | None = None  # (log10 min, log10 max): shared by compared runs
    max_columns: int = 600


def _columns(heat: Heatmap) -> tuple[list[int], list[list[float]]]:
    """At most max_columns columns: neighbouring log steps merged by their geometric mean."""
    n = len(heat.steps)
    if n <= heat.max_columns:
        return heat.steps, heat.values
    size = n / heat.max_columns
    steps, values = [], []
    for b in range(heat.max_columns):
        lo, hi = int(b * size), max(int((b + 1) * size), int(b * size) + 1)
        steps.append(heat.steps[hi - 1])
        column = []
        for layer in range(len(heat.layers)):
            cell = [row[layer] for row in heat.values[lo:hi]]
            if any(math.isinf(v) for v in cell):
                column.append(math.inf)
                continue
            positive = [v for v in cell if v > 0 and math.isfinite(v)]
            if positive:
                column.append(math.exp(sum(math.log(v) for v in positive) / len(positive)))
            else:
                column.append(0.0 if any(v == 0 for v in cell) else math.nan)
        values.append(column)
    return steps, values


def log_range(values: list[list[float]]) -> tuple[float, float]:
    """log10 of the smallest and largest finite positive value (the colour scale's ends)."""
    positive = [v for row in values for v in row if v > 0 and math.isfinite(v)]
    return (math.log10(min(positive)), math.log10(max(positive))) if positive else (0.0, 1.0)


def heatmap(heat: Heatmap, css_class: str = "heatmap") -> str:
    """An SVG with the matrix as one embedded PNG (one pixel per cell, scaled without smoothing)."""
    steps, values = _columns(heat)
    positive = [v for row in values for v in row if v > 0 and math.isfinite(v)]
    if not steps or not positive:
        return f'<p class="empty">{escape(heat.title)}: no finite positive values recorded.</p>'
    lo, hi = heat.log_range or log_range(values)
    span = hi - lo if hi > lo else 1.0

    def cell(v: float) -> tuple[int, int, int]:
        if math.isnan(v):
            return MISSING
        if math.isinf(v) or v < 0:
            return NONFINITE
        if v == 0:
            return ZERO
        return colour((math.log10(v) - lo) / span)

    pixels = [[cell(values[c][r]) for c in range(len(steps))] for r in range(len(heat.layers))]
    label_w = min(max(len(name) for name in heat.layers) * 7 + 12, 220)
    row_h = 16 if len(heat.layers) <= 24 else max(4, 384 // len(heat.layers))
    plot_w = 620
    plot_h = row_h * len(heat.layers)
    bar_w = 70
    width = label_w + plot_w + bar_w + 10
    top = 22
    height = top + plot_h + 42

    def x_of(step: int) -> float:
        return label_w + (steps.index(step) + 0.5) * plot_w / len(steps)

    parts = [
        f'<div class="heat-wrap"><svg class="{css_class}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(heat.title)}" data-quantity="{escape(heat.quantity)}" data-layers="{len(heat.layers)}" '
        f'data-columns="{len(steps)}" data-log-min="{lo!r}" data-log-max="{hi!r}">',
        f'<text class="chart-title" x="{label_w}" y="15">{escape(heat.title)}</text>',
        f'<image class="heat-cells" x="{label_w}" y="{top}" width="{plot_w}" height="{plot_h}" '
        f'preserveAspectRatio="none" style="image-rendering:pixelated;image-rendering:crisp-edges" '
        f'href="{png_data_uri(pixels)}"/>',
    ]
    if row_h >= 9:
        for r, name in enumerate(heat.layers):
            parts.append(
                f'<text class="layer-label" x="{label_w - 5}" y="{top + (r + 0.5) * row_h + 4:.1f}" '
                f'text-anchor="end">{escape(name)}</text>'
            )
    else:
        parts.append(
            f'<text class="layer-label" x="{label_w - 5}" y="{top + 10}" text-anchor="end">{escape(heat.layers[0])}</text>'
            f'<text class="layer-label" x="{label_w - 5}" y="{top + plot_h}" text-anchor="end">{escape(heat.layers[-1])}</text>'
        )
    for i in sorted({0, len(steps) - 1, *range(0, len(steps), max(1, len(steps) // 6))}):
        xx = label_w + (i + 0.5) * plot_w / len(steps)
        parts.append(
            f'<text class="tick" x="{xx:.1f}" y="{top + plot_h + 13}" text-anchor="middle">{steps[i]}</text>'
        )
    parts.append(
        f'<text class="axis-label" x="{label_w + plot_w / 2}" y="{top + plot_h + 27}" text-anchor="middle">optimizer step (log steps)</text>'
    )
    step_set = set(steps)
    for step, col, text in heat.marks:
        nearest = step if step in step_set else min(steps, key=lambda s: abs(s - step))
        xx = x_of(nearest)
        parts.append(
            f'<path class="event-mark" d="M{xx:.1f},{top + plot_h + 1} l-4,8 h8 z" fill="{col}"><title>{escape(text)}</title></path>'
        )
    # the colour bar: decades labelled on a log scale
    bx = label_w + plot_w + 10
    ramp = [[colour(1 - i / 63)] for i in range(64)]
    parts.append(
        f'<image x="{bx}" y="{top}" width="12" height="{plot_h}" preserveAspectRatio="none" '
        f'style="image-rendering:pixelated" href="{png_data_uri(ramp)}"/>'
    )
    decades = list(range(math.ceil(lo), math.floor(hi) + 1)) or [lo, hi]
    if len(decades) > 8:
        decades = decades[:: math.ceil(len(decades) / 8)]
    for d in decades:
        yy = top + plot_h - (d - lo) / span * plot_h
        parts.append(
            f'<text class="tick" x="{bx + 15}" y="{yy + 3:.1f}">{_decade(d)}</text>'
            f'<line class="grid" x1="{bx + 9}" x2="{bx + 13}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
        )
    parts.append("</svg>")
    # the cell values for the hover read-out (report.js): [layers, steps, values by step]
    cells = [[None if not math.isfinite(v) else float(f"{v:.3g}") for v in row] for row in values]
    data = json.dumps(
        {"layers": heat.layers, "steps": steps, "values": cells}, separators=(",", ":")
    )
    data = data.replace("</", "<\\/")  # never closes the script element early
    parts.append(f'<script type="application/json" class="heat-data">{data}</script></div>')
    return "".join(parts)
