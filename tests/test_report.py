"""`bptrain report`: one self-contained HTML file from run directories, and grad_norms.jsonl behind it."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import pytest

from bptrain.layerlog import FILENAME, LayerLogWriter, read_layer_log
from bptrain.report.charts import colour
from bptrain.report.page import SECTIONS
from tests.conftest import only_run_dir


def _stats(norms: list[float], ratios: list[float], layers: list[str]) -> dict[str, float]:
    stats = {f"grad_norm/layer/{name}": v for name, v in zip(layers, norms, strict=True)}
    stats.update({f"update_ratio/layer/{name}": v for name, v in zip(layers, ratios, strict=True)})
    return stats


def test_layer_log_survives_a_cut_line_and_a_resumed_run(tmp_path):
    layers = ["net.0", "net.2"]
    writer = LayerLogWriter(tmp_path)
    for step in (10, 20, 30):
        writer.write(step, _stats([step * 1e-3, float("nan")], [1e-3, float("inf")], layers))
    writer.close()
    with (tmp_path / FILENAME).open("a") as f:
        f.write('{"step": 40, "grad_norm": [0.1')  # the line a crash cut off
    resumed = LayerLogWriter(tmp_path)  # a resume from the checkpoint at step 15 writes 20 again
    resumed.write(20, _stats([0.5, 0.25], [2e-3, 3e-3], layers))
    resumed.close()

    log = read_layer_log(tmp_path / FILENAME)
    assert log is not None and log.layers == layers
    assert log.steps == [10, 20]  # the stale 20 and 30 of the first attempt are gone
    assert log.grad_norm[0][0] == pytest.approx(0.01) and math.isnan(log.grad_norm[0][1])
    assert math.isinf(log.update_ratio[0][1])
    assert log.grad_norm[1] == [0.5, 0.25]
    header = json.loads((tmp_path / FILENAME).read_text().splitlines()[0])
    assert header == {"layers": layers}


def _heatmap(
    html: str, kind: str = "grad"
) -> tuple[list[list[tuple[int, int, int]]], float, float]:
    """Decode a heatmap's PNG (one pixel per cell) and its log10 colour range from the page."""
    from PIL import Image

    svg = re.search(rf'<svg class="heatmap heatmap-{kind}"[^>]*>.*?</svg>', html, re.S).group(0)
    lo = float(re.search(r'data-log-min="([^"]+)"', svg).group(1))
    hi = float(re.search(r'data-log-max="([^"]+)"', svg).group(1))
    uri = re.search(r'class="heat-cells"[^>]*href="data:image/png;base64,([^"]+)"', svg).group(1)
    image = Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB")
    pixels = [[image.getpixel((x, y)) for x in range(image.width)] for y in range(image.height)]
    return pixels, lo, hi


def value_of(rgb: tuple[int, int, int], lo: float, hi: float) -> float:
    """Invert the colour scale: the value whose viridis colour is nearest to `rgb`."""
    best = min(
        range(1025),
        key=lambda i: sum((a - b) ** 2 for a, b in zip(colour(i / 1024), rgb, strict=True)),
    )
    return 10 ** (lo + best / 1024 * (hi - lo))


@pytest.fixture
def real_run(cli, write_config, tmp_path) -> Path:
    result = cli("fit", write_config({"trainer": {"max_epochs": 2}}))
    assert result.exit_code == 0, result.output
    return only_run_dir(tmp_path / "runs")


def test_report_of_a_real_run_is_one_offline_file_with_every_section(cli, real_run):
    result = cli("report", real_run)
    assert result.exit_code == 0, result.output
    page = real_run / "report.html"
    assert f"wrote {page}" in result.output
    html = page.read_text()
    for section, _ in SECTIONS:
        assert (f'<section id="{section}">' in html) == (section != "compare")
    # nothing is fetched: no external URLs in src/href, no stylesheet or script links
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html
    curves = re.search(r'<section id="curves">.*?</section>', html, re.S).group(0)
    labels = re.findall(r'class="series" data-label="([^"]+)"', curves)
    assert {"train/loss (log steps)", "train/loss (epoch mean)", "val/loss", "val/acc"} <= set(
        labels
    )
    assert "val/loss" in html and "checkpoints" in html and "last.pt" in html


def test_report_heatmap_rows_are_layers_in_forward_order_on_a_log_scale(cli, real_run):
    layers = ["net.0", "net.2", "net.4"]
    writer = LayerLogWriter(real_run)
    for step in (2, 4, 6):  # a known decay: each layer toward the input 10x smaller
        writer.write(step, _stats([1e-5, 1e-4, 1e-3], [1e-6, 1e-4, 1e-2], layers))
    writer.close()
    assert cli("report", real_run, "--output", real_run / "r.html").exit_code == 0
    html = (real_run / "r.html").read_text()
    pixels, lo, hi = _heatmap(html)
    assert len(pixels) == 3 and len(pixels[0]) == 3  # rows: layers, columns: log steps
    assert [value_of(row[1], lo, hi) for row in pixels] == pytest.approx(
        [1e-5, 1e-4, 1e-3], rel=0.05
    )
    labels = re.findall(r'class="layer-label"[^>]*>([^<]+)<', html)
    assert labels[:3] == layers
    ratios, lo, hi = _heatmap(html, "update")
    assert value_of(ratios[0][0], lo, hi) == pytest.approx(1e-6, rel=0.05)


def test_report_marks_clipping_and_non_finite_steps(cli, real_run):
    metrics = real_run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines.insert(1, json.dumps({"type": "step", "step": 3, "train/loss": None, "grad_norm": "inf"}))
    metrics.write_text("\n".join(lines) + "\n")
    config = real_run / "config.yaml"
    config.write_text(
        config.read_text().replace("grad_clip: null", "grad_clip: {max_norm: 1.0e-6}")
    )
    assert cli("report", real_run).exit_code == 0
    events = re.search(
        r'<section id="events">.*?</section>', (real_run / "report.html").read_text(), re.S
    ).group(0)
    assert "non-finite loss or gradient at step 3" in events
    assert "clipped to 1e-06" in events


def test_report_compares_runs_side_by_side(cli, write_config, tmp_path):
    for lr in (0.01, 0.002):
        assert cli("fit", write_config(), f"optimizer.lr={lr}").exit_code == 0
    out = tmp_path / "cmp.html"
    result = cli("report", tmp_path / "runs", "-o", out)  # a folder of runs expands to them
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert '<section id="compare">' in html
    diff = re.search(r'<table class="config-diff">.*?</table>', html, re.S).group(0)
    assert "optimizer.lr" in diff and "0.01" in diff and "0.002" in diff
    val_loss = [
        label
        for label in re.findall(r'class="series" data-label="([^"]+)"', html)
        if label.endswith("val/loss")
    ]
    assert val_loss == ["lr=0.01 · val/loss", "lr=0.002 · val/loss"]


def test_report_of_a_crashed_run_says_so(cli, real_run):
    (real_run / "summary.json").unlink()
    with (real_run / "metrics.jsonl").open("a") as f:
        f.write('{"type": "step", "step": 99, "train/lo')
    assert cli("report", real_run).exit_code == 0
    assert "incomplete (no summary.json" in (real_run / "report.html").read_text()


def test_report_refuses_a_directory_that_holds_no_run(cli, tmp_path):
    result = cli("report", tmp_path)
    assert result.exit_code == 2
    assert "not a run directory" in result.output
    assert cli("report", tmp_path / "missing").exit_code == 2


def test_fit_writes_grad_norms_and_the_report_without_tensorboard(real_run):
    log = read_layer_log(real_run / FILENAME)  # TINY has tensorboard: false
    metrics = [json.loads(line) for line in (real_run / "metrics.jsonl").read_text().splitlines()]
    assert log is not None and log.layers == ["net.0", "net.2", "net.4"]  # the MLP, input first
    assert log.steps == [m["step"] for m in metrics if m["type"] == "step"]
    assert all(v > 0 for row in log.grad_norm + log.update_ratio for v in row)
    html = (real_run / "report.html").read_text()
    pixels, _, _ = _heatmap(html)
    assert len(pixels) == 3 and len(pixels[0]) == len(log.steps)


def test_logging_report_false_writes_no_report(cli, write_config, tmp_path):
    config = write_config({"trainer": {"max_epochs": 1}, "logging": {"report": False}})
    result = cli("fit", config)
    assert result.exit_code == 0, result.output
    assert not (only_run_dir(tmp_path / "runs") / "report.html").exists()
