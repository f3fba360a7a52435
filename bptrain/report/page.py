"""Assemble the report: one HTML page, its sections in a fixed order, nothing loaded from outside.

Sections (their ids are stable: tests and links use them): ``summary``,
``compare`` (several runs only), ``curves``, ``lr``, ``gradient-flow``, ``events``,
``grad-inspect``, ``config``, ``checkpoints``, ``system``.
"""

from __future__ import annotations

import json
import math
import time
from html import escape
from typing import Any

from bptrain.report.charts import (
    EVENT_COLOURS,
    PALETTE,
    Chart,
    Heatmap,
    Series,
    fmt,
    heatmap,
    line_chart,
    log_range,
)
from bptrain.report.rundata import Run, config_differences

SECTIONS = [
    ("summary", "Summary"),
    ("compare", "Comparison"),
    ("curves", "Training and validation curves"),
    ("lr", "Learning rate"),
    ("gradient-flow", "Gradient flow"),
    ("events", "Events"),
    ("grad-inspect", "grad-inspect"),
    ("config", "Resolved config"),
    ("checkpoints", "Checkpoints"),
    ("system", "System"),
]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#20232a;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header .sub{color:#c8c8c8;font-size:12px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:6px 24px;z-index:2}
nav a{margin-right:14px;color:#0b5cad;text-decoration:none;font-size:13px}
main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:10px 16px;margin:14px 0}
section h2{font-size:17px;margin:4px 0 10px}h3{font-size:14px;margin:12px 0 6px}
.grid{display:flex;flex-wrap:wrap;gap:10px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
td,th{border-bottom:1px solid #eee;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:700}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px;max-height:480px}
.muted,.empty{color:#777}.warning{color:#a65b00}.error{color:#b00020}
svg text{font:11px system-ui,sans-serif;fill:#333}svg .chart-title{font-size:13px;font-weight:600}
svg .plot{fill:#fff;stroke:#bbb}svg .grid{stroke:#eee}svg .hline{stroke:#888;stroke-dasharray:5 3}
svg .mark{stroke-width:1.2;opacity:.7}svg .layer-label{font-family:ui-monospace,monospace;font-size:11px}
.heat-wrap{position:relative;display:inline-block}
.tip{position:absolute;pointer-events:none;background:#20232a;color:#fff;font-size:12px;padding:3px 7px;
border-radius:4px;white-space:nowrap;display:none;z-index:3}
.status-completed{color:#1a7f37}.badge{display:inline-block;padding:0 6px;border-radius:8px;background:#eee;font-size:12px}
"""

# The one script: a read-out of the heatmap cell under the pointer. No library, no network.
JS = """
document.querySelectorAll('.heat-wrap').forEach(function (wrap) {
  var svg = wrap.querySelector('svg'), img = wrap.querySelector('image.heat-cells');
  var data = JSON.parse(wrap.querySelector('script.heat-data').textContent);
  var tip = document.createElement('div'); tip.className = 'tip'; wrap.appendChild(tip);
  var unit = svg.getAttribute('data-quantity') || 'value';
  img.addEventListener('mousemove', function (ev) {
    var box = img.getBoundingClientRect();
    var c = Math.floor((ev.clientX - box.left) / box.width * data.steps.length);
    var r = Math.floor((ev.clientY - box.top) / box.height * data.layers.length);
    if (c < 0 || r < 0 || c >= data.steps.length || r >= data.layers.length) { return; }
    var v = data.values[c][r];
    tip.textContent = data.layers[r] + ' \\u00b7 step ' + data.steps[c] + ' \\u00b7 ' + unit + ' ' +
      (v === null ? 'none / non-finite' : v.toExponential(2));
    var outer = wrap.getBoundingClientRect();
    tip.style.left = (ev.clientX - outer.left + 12) + 'px';
    tip.style.top = (ev.clientY - outer.top + 12) + 'px';
    tip.style.display = 'block';
  });
  img.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
});
"""


def _table(header: list[str], rows: list[list[str]], css_class: str = "") -> str:
    """Cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(rows_cell(c) for c in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def rows_cell(cell: str) -> str:
    if cell.startswith("<td"):
        return cell
    return f"<td>{cell}</td>"


def _num(value: Any, best: bool = False) -> str:
    text = (
        fmt(value)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else escape(str(value if value is not None else "–"))
    )
    return f'<td class="num{" best" if best else ""}">{text}</td>'


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _run_heading(run: Run, runs: list[Run]) -> str:
    if len(runs) == 1:
        return ""
    index = runs.index(run)
    return f'<h3><span style="color:{PALETTE[index % len(PALETTE)]}">■</span> {escape(run.label)} <span class="muted">{escape(str(run.path))}</span></h3>'


# --------------------------------------------------------------------------- sections


def summary_section(runs: list[Run]) -> str:
    out = []
    for run in runs:
        summary = run.summary or {}
        final, best = summary.get("final") or {}, summary.get("best") or {}
        last_epoch = run.epochs[-1] if run.epochs else {}
        final = final or last_epoch
        keys = sorted(k for k in {**final, **best} if "/" in k)
        rows = [[escape(k), _num(final.get(k)), _num(best.get(k))] for k in keys]
        for key, value in (summary.get("test") or {}).items():
            rows.append([escape(key), _num(value), "<td></td>"])
        for record in run.tests if not summary.get("test") else []:
            for key, value in record.items():
                if "/" in key:
                    rows.append([escape(key), _num(value), "<td></td>"])
        facts = [
            f'status <span class="badge status-{escape(run.status.split()[0])}">{escape(run.status)}</span>',
            f"stop reason: {escape(str(summary.get('stop_reason') or '–'))}",
            f"epochs {summary.get('epochs', last_epoch.get('epoch', '–'))}",
            f"steps {summary.get('steps', run.steps[-1]['step'] if run.steps else '–')}",
        ]
        if "wall_time_s" in summary:
            facts.append(f"wall time {summary['wall_time_s']:.1f} s")
        if best.get("monitor"):
            facts.append(
                f"best epoch {best.get('epoch')} by {escape(str(best['monitor']))} ({escape(str(best.get('mode', '')))})"
            )
        out.append(
            _run_heading(run, runs)
            + f'<p class="muted">{escape(str(run.path))}</p><p>{" · ".join(facts)}</p>'
            + (
                _table(["metric", "final", "best"], rows)
                if rows
                else '<p class="empty">no epoch has finished yet.</p>'
            )
        )
    return "".join(out)


def compare_section(runs: list[Run]) -> str:
    """Final and best metrics side by side (best across runs in bold), and the config keys that differ."""
    header = ["metric", *(escape(r.label) for r in runs)]
    metrics: list[tuple[str, str, str]] = []  # (row label, where, key)
    seen = set()
    for run in runs:
        summary = run.summary or {}
        final = summary.get("final") or (run.epochs[-1] if run.epochs else {})
        for key in final:
            if "/" in key and ("final", key) not in seen:
                seen.add(("final", key))
                metrics.append((f"final {key}", "final", key))
        for key in summary.get("best") or {}:
            if "/" in key and ("best", key) not in seen:
                seen.add(("best", key))
                metrics.append((f"best {key}", "best", key))
        for key in summary.get("test") or {}:
            if ("test", key) not in seen:
                seen.add(("test", key))
                metrics.append((key, "test", key))
    rows = []
    for label, where, key in sorted(metrics, key=lambda m: (m[1] != "final", m[1], m[2])):
        values = []
        for run in runs:
            summary = run.summary or {}
            source = summary.get(where) or (
                (run.epochs[-1] if run.epochs else {}) if where == "final" else {}
            )
            values.append(_number(source.get(key)))
        finite = [v for v in values if math.isfinite(v)]
        lower_better = "loss" in key or "error" in key or "mse" in key or "mae" in key
        target = (min(finite) if lower_better else max(finite)) if len(finite) > 1 else None
        rows.append([escape(label), *(_num(v, best=v == target) for v in values)])
    status = [["status", *(escape(r.status.split(" (")[0]) for r in runs)]]
    for key in ("epochs", "steps", "wall_time_s"):
        status.append([key, *(_num((r.summary or {}).get(key)) for r in runs)])
    diff = config_differences(runs)
    diff_rows = [
        [
            f"<code>{escape(key)}</code>",
            *(f"<code>{escape(json.dumps(v, default=str))}</code>" for v in values),
        ]
        for key, values in diff.items()
    ]
    return (
        "<h3>Final and best metrics</h3>"
        + _table(header, status + rows, "compare-metrics")
        + "<h3>What differs in their configs</h3>"
        + (
            _table(["key", *(escape(r.label) for r in runs)], diff_rows, "config-diff")
            if diff_rows
            else '<p class="empty">the resolved configs are identical.</p>'
        )
    )


def _base(key: str) -> str:
    return key.split("/", 1)[1] if "/" in key else key


def _marks(runs: list[Run]) -> list[tuple[float, str, str]]:
    marks = []
    for run in runs:
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        for event in run.marks():
            marks.append(
                (float(event.step), EVENT_COLOURS.get(event.kind, "#555"), prefix + event.text)
            )
    return marks[:400]


def curves_section(runs: list[Run]) -> str:
    """One chart per metric (loss, acc, ...): train per log step, train per epoch, validation."""
    bases: list[str] = []
    for run in runs:
        for row in run.epochs + run.steps:
            for key in row:
                if key.split("/")[0] in ("train", "val") and _base(key) not in bases:
                    bases.append(_base(key))
    charts = []
    multi = len(runs) > 1
    marks = _marks(runs)
    for base in bases:
        chart = Chart(title=base, marks=marks)
        for i, run in enumerate(runs):
            run_colour = PALETTE[i % len(PALETTE)]
            prefix = f"{run.label} · " if multi else ""
            sources = [
                (f"train/{base}", run.steps, "(log steps)", "2 3", 1.0, "#9bbbd8"),
                (f"train/{base}", run.epochs, "(epoch mean)", "6 3", 1.8, PALETTE[0]),
                (f"val/{base}", run.epochs, "", "", 2.0, PALETTE[1]),
            ]
            for key, rows, suffix, dash, width, single_colour in sources:
                points = [(float(row["step"]), _number(row.get(key))) for row in rows if key in row]
                if points:
                    chart.series.append(
                        Series(
                            label=f"{prefix}{key} {suffix}".strip(),
                            points=points,
                            colour=run_colour if multi else single_colour,
                            dash=dash,
                            width=width,
                            markers=rows is run.epochs and len(points) < 60,
                        )
                    )
            if not multi:
                for key, value in ((run.summary or {}).get("test") or {}).items():
                    if _base(key) == base and isinstance(value, int | float):
                        chart.hlines.append((float(value), f"{key} {fmt(value)}"))
        values = [y for s in chart.series for _, y in s.points if math.isfinite(y)]
        chart.log_y = bool(values) and min(values) > 0 and max(values) / min(values) > 30
        charts.append(line_chart(chart))
    if not charts:
        return '<p class="empty">no metrics logged yet.</p>'
    return '<div class="grid">' + "".join(charts) + "</div>"


def lr_section(runs: list[Run]) -> str:
    charts = []
    lr = Chart(title="learning rate (param group 0)")
    scale = Chart(title="fp16 loss scale", log_y=True)
    for i, run in enumerate(runs):
        colour = PALETTE[i % len(PALETTE)]
        by_step = {
            row["step"]: _number(row.get("lr")) for row in run.steps + run.epochs if "lr" in row
        }
        points = sorted(by_step.items())
        if points:
            lr.series.append(
                Series(
                    run.label if len(runs) > 1 else "lr",
                    [(float(s), v) for s, v in points],
                    colour,
                    markers=len(points) < 40,
                )
            )
        scales = [
            (float(r["step"]), _number(r["loss_scale"])) for r in run.steps if "loss_scale" in r
        ]
        if scales:
            scale.series.append(
                Series(run.label if len(runs) > 1 else "loss scale", scales, colour)
            )
    values = [y for s in lr.series for _, y in s.points if y > 0]
    lr.log_y = bool(values) and max(values) / min(values) > 100
    charts.append(line_chart(lr))
    if scale.series:
        charts.append(line_chart(scale))
    return '<div class="grid">' + "".join(charts) + "</div>"


def gradient_flow_section(runs: list[Run]) -> str:
    """The total norm over time, then per run the layer x step heatmaps (gradient norm, update ratio)."""
    total = Chart(title="total gradient norm (before clipping)", log_y=True, marks=_marks(runs))
    for i, run in enumerate(runs):
        points = [
            (float(r["step"]), _number(r.get("grad_norm"))) for r in run.steps if "grad_norm" in r
        ]
        if points:
            total.series.append(
                Series(
                    run.label if len(runs) > 1 else "grad_norm", points, PALETTE[i % len(PALETTE)]
                )
            )
        clip = run.clip_threshold()
        if clip is not None:
            total.hlines.append(
                (clip, f"clip max_norm {fmt(clip)}" + (f" ({run.label})" if len(runs) > 1 else ""))
            )
    out = [
        '<p class="muted">Rows are layers in forward order (input at the top), columns the log steps; '
        "the colour is log-scaled (see the bar: purple small, yellow large). Vanishing gradients show as "
        "a dark band toward the top, exploding ones as bright rows. Grey: no gradient; magenta: NaN/Inf; "
        "black: exactly zero. Triangles under the map mark events (see Events).</p>",
        line_chart(total),
    ]
    # compared runs share one colour scale per quantity, so equal colours mean equal values
    shared = {
        name: _shared_range(
            [getattr(r.layers, name) for r in runs if r.layers is not None and r.layers.steps]
        )
        for name in ("grad_norm", "update_ratio")
    }
    for run in runs:
        out.append(_run_heading(run, runs))
        log = run.layers
        if log is None or not log.steps:
            out.append(
                '<p class="empty">no per-layer gradient norms in this run (grad_norms.jsonl is written '
                "by fit when logging.grad_norms is on).</p>"
            )
            continue
        marks = [(e.step, EVENT_COLOURS.get(e.kind, "#555"), e.text) for e in run.marks()][:400]
        ratio = (log.grad_norm[-1][0] / log.grad_norm[-1][-1]) if log.grad_norm else math.nan
        out.append(
            heatmap(
                Heatmap(
                    "‖∇W‖ per layer (gradient norm)",
                    log.layers,
                    log.steps,
                    log.grad_norm,
                    marks,
                    "‖∇W‖",
                    shared["grad_norm"],
                ),
                "heatmap heatmap-grad",
            )
        )
        if math.isfinite(ratio) and ratio > 0:
            out.append(
                f'<p class="muted">At the last log step the first layer\'s gradient norm is '
                f"{fmt(ratio)}× the last layer's ({escape(log.layers[0])} vs {escape(log.layers[-1])}).</p>"
            )
        if any(math.isfinite(v) for row in log.update_ratio for v in row):
            out.append(
                heatmap(
                    Heatmap(
                        "‖ΔW‖/‖W‖ per layer (update ratio; healthy around 1e-3)",
                        log.layers,
                        log.steps,
                        log.update_ratio,
                        marks,
                        "‖ΔW‖/‖W‖",
                        shared["update_ratio"],
                    ),
                    "heatmap heatmap-update",
                )
            )
    return "".join(out)


def _shared_range(matrices: list[list[list[float]]]) -> tuple[float, float] | None:
    ranges = [
        log_range(m) for m in matrices if any(v > 0 and math.isfinite(v) for row in m for v in row)
    ]
    if len(ranges) < 2:
        return None
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def events_section(runs: list[Run]) -> str:
    out = []
    for run in runs:
        out.append(_run_heading(run, runs))
        events = run.marks()
        if run.nan_report:
            out.append(
                f'<p class="error">nan_report.json: {escape(json.dumps(run.nan_report, default=str)[:600])}</p>'
            )
        if not events:
            out.append(
                '<p class="empty">none: no non-finite values, clipping, skips or interruptions.</p>'
            )
            continue
        counts: dict[str, int] = {}
        for event in events:
            counts[event.kind] = counts.get(event.kind, 0) + 1
        out.append("<p>" + ", ".join(f"{escape(k)}: {v}" for k, v in counts.items()) + "</p>")
        rows = [[str(e.step), escape(e.kind), escape(e.text)] for e in events[:200]]
        out.append(_table(["step", "kind", "what"], rows, "events"))
        if len(events) > 200:
            out.append(f'<p class="muted">… and {len(events) - 200} more.</p>')
    return "".join(out)


def _log_bars(
    title: str,
    names: list[str],
    values: list[float],
    reference: float | None = None,
    ref_label: str = "",
) -> str:
    """Horizontal bars on an absolute log scale (decades labelled), so 0.10 and 0.12 look alike."""
    finite = [v for v in values if math.isfinite(v) and v > 0]
    if not finite:
        return ""
    lo = math.floor(math.log10(min(finite + ([reference] if reference else []))))
    hi = math.ceil(math.log10(max(finite + ([reference] if reference else []))))
    hi = hi if hi > lo else lo + 1
    label_w, bar_w, row = 140, 380, 15
    height = 34 + row * len(names) + 18
    width = label_w + bar_w + 80

    def x(v: float) -> float:
        return label_w + (math.log10(v) - lo) / (hi - lo) * bar_w

    parts = [
        f'<svg class="log-bars" viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        f'<text class="chart-title" x="{label_w}" y="14">{escape(title)}</text>',
    ]
    for d in range(lo, hi + 1):
        xx = x(10.0**d)
        parts.append(
            f'<line class="grid" x1="{xx:.1f}" x2="{xx:.1f}" y1="24" y2="{height - 16}"/>'
            f'<text class="tick" x="{xx:.1f}" y="{height - 4}" text-anchor="middle">1e{d}</text>'
        )
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        y = 26 + i * row
        parts.append(
            f'<text class="layer-label" x="{label_w - 5}" y="{y + 10}" text-anchor="end">{escape(name)}</text>'
        )
        if math.isfinite(value) and value > 0:
            parts.append(
                f'<rect x="{label_w}" y="{y + 1}" width="{max(x(value) - label_w, 1):.1f}" height="{row - 4}" fill="#3b528b">'
                f"<title>{escape(name)}: {fmt(value)}</title></rect>"
                f'<text class="tick" x="{x(value) + 4:.1f}" y="{y + 10}">{fmt(value)}</text>'
            )
    if reference:
        xx = x(reference)
        parts.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="22" y2="{height - 16}" stroke="#d62728" stroke-dasharray="4 2"/>'
            f'<text class="tick" x="{xx + 3:.1f}" y="24" fill="#d62728">{escape(ref_label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _inspect_report(report: dict[str, Any]) -> str:
    layers = report.get("layers") or []
    names = [str(layer.get("name")) for layer in layers]
    rows = []
    for layer in layers:
        flags = ", ".join(f.get("name", "") for f in layer.get("flags") or [])
        rows.append(
            [
                f"<code>{escape(str(layer.get('name')))}</code>",
                _num(layer.get("grad_norm")),
                _num(layer.get("signal_norm")),
                _num(layer.get("signal_factor")),
                _num(layer.get("expected_factor")),
                _num(layer.get("update_ratio")),
                escape(flags),
            ]
        )
    flags = report.get("flags") or []
    trend = report.get("depth_trend") or {}
    global_norm = _number(report.get("global_grad_norm"))
    out = [
        f"<p><b>verdict:</b> {escape(str(report.get('verdict', '')))}</p>",
        f'<p class="muted">loss {fmt(_number(report.get("loss")))}, global ‖∇‖ {fmt(global_norm)}, '
        f"{report.get('batches', '?')} batches of {report.get('batch_size', '?')}; depth trend: factor/layer "
        f"{fmt(_number(trend.get('factor_per_layer')))}, signal first/last {fmt(_number(trend.get('first_last_ratio')))}</p>",
    ]
    if flags:
        out.append(
            "<ul>"
            + "".join(
                f'<li class="{escape(str(f.get("severity")))}">{escape(str(f.get("severity")))}: '
                f"{escape(str(f.get('layer') or 'model'))}: {escape(str(f.get('message')))}</li>"
                for f in flags
            )
            + "</ul>"
        )
    out.append(
        _table(["layer", "‖∇W‖", "‖∂L/∂out‖", "factor", "√χ", "update ratio", "flags"], rows)
    )
    out.append('<div class="grid">')
    out.append(
        _log_bars(
            "‖∂L/∂out‖ per layer (error signal, log scale)",
            names,
            [_number(layer.get("signal_norm")) for layer in layers],
            _number(layers[-1].get("signal_norm")) if layers else None,
            "output layer",
        )
    )
    out.append(
        _log_bars(
            "‖∇W‖ per layer (log scale)",
            names,
            [_number(layer.get("grad_norm")) for layer in layers],
        )
    )
    out.append("</div>")
    return "".join(out)


def grad_inspect_section(runs: list[Run]) -> str:
    out = []
    for run in runs:
        out.append(_run_heading(run, runs))
        data = run.grad_inspect
        if data is None:
            out.append(
                '<p class="empty">no grad-inspect result in this run. Make one with '
                f"<code>bptrain grad-inspect {escape(str(run.path / 'config.yaml'))} --checkpoint "
                f"{escape(str(run.path / 'checkpoints' / 'last.pt'))} --json {escape(str(run.path / 'grad_inspect.json'))}</code> "
                "and make the report again.</p>"
            )
        elif isinstance(data.get("variants"), list):
            for variant in data["variants"]:
                out.append(f"<h3>{escape(str(variant.get('label')))}</h3>")
                out.append(_inspect_report(variant.get("report") or {}))
        else:
            out.append(_inspect_report(data))
    return "".join(out)


def config_section(runs: list[Run]) -> str:
    out = []
    for run in runs:
        out.append(_run_heading(run, runs))
        text = run.config_text if run.config is not None else "(config.yaml missing or unreadable)"
        out.append(
            f"<details {'open' if len(runs) == 1 else ''}><summary>config.yaml</summary><pre>{escape(text)}</pre></details>"
        )
    return "".join(out)


def checkpoints_section(runs: list[Run]) -> str:
    out = []
    for run in runs:
        out.append(_run_heading(run, runs))
        best = (run.summary or {}).get("best") or {}
        if best.get("monitor"):
            out.append(
                f"<p>best: epoch {best.get('epoch')}, step {best.get('step')}, "
                f"{escape(str(best['monitor']))} = {fmt(_number(best.get('value')))}</p>"
            )
        if not run.checkpoints:
            out.append('<p class="empty">no checkpoints written.</p>')
            continue
        rows = [
            [
                f"<code>{escape(name)}</code>",
                _num(size / 1e6 if size >= 1e5 else size / 1e3),
                "MB" if size >= 1e5 else "kB",
                escape(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))),
            ]
            for name, size, mtime in run.checkpoints
        ]
        out.append(_table(["file", "size", "", "written"], rows, "checkpoints"))
    return "".join(out)


def system_section(runs: list[Run]) -> str:
    out = []
    for run in runs:
        out.append(_run_heading(run, runs))
        summary = run.summary or {}
        facts: dict[str, Any] = {}
        for key in (
            "device",
            "precision",
            "distributed",
            "params",
            "nonfinite",
            "versions",
            "system",
        ):
            if key in summary:
                facts[key] = summary[key]
        trainer = (run.config or {}).get("trainer") or {}
        for key in ("device", "strategy", "compile", "deterministic"):
            if key in trainer:
                facts[f"trainer.{key}"] = trainer[key]
        if not facts:
            out.append(
                '<p class="empty">no summary.json yet: system facts are written when the run ends.</p>'
            )
            continue
        rows = []
        for key, value in facts.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items())
            rows.append([escape(key), escape(str(value))])
        out.append(_table(["", ""], rows, "system"))
    return "".join(out)


BUILDERS = {
    "summary": summary_section,
    "compare": compare_section,
    "curves": curves_section,
    "lr": lr_section,
    "gradient-flow": gradient_flow_section,
    "events": events_section,
    "grad-inspect": grad_inspect_section,
    "config": config_section,
    "checkpoints": checkpoints_section,
    "system": system_section,
}


def render(runs: list[Run]) -> str:
    sections = [(sid, title) for sid, title in SECTIONS if sid != "compare" or len(runs) > 1]
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{escape(title)}</h2>{BUILDERS[sid](runs)}</section>'
        for sid, title in sections
    )
    names = ", ".join(run.label for run in runs)
    from bptrain.version import __version__

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>bptrain report: {escape(names)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>bptrain report</h1><div class="sub">{escape(names)} · made {stamp} by bptrain {__version__}</div></header>'
        f"<nav>{nav}</nav><main>{body}</main><script>{JS}</script></body></html>\n"
    )
