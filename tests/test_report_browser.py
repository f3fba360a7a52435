"""The report in a real browser: Debian's chromium, headless, driven by Playwright (no browser download).

CI installs both (`.ci/run`: apt-get install chromium; playwright comes with the test extra). The
runs are real: the vanishing-gradient lesson configs, shortened.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from bptrain.layerlog import FILENAME, read_layer_log
from bptrain.report.charts import colour
from bptrain.report.page import SECTIONS

CHROMIUM = os.environ.get("BPTRAIN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip(
        "chromium is not installed (apt-get install chromium; CI installs it)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def lessons(tmp_path_factory) -> dict[str, Path]:
    """Short real runs of the sigmoid+Xavier and ReLU+Kaiming lessons, and their reports."""
    from typer.testing import CliRunner

    from bptrain.cli import app

    root = tmp_path_factory.mktemp("lessons")
    runner, runs = CliRunner(), {}
    for name in ("vanishing_sigmoid_xavier", "vanishing_relu_kaiming"):
        overrides = [
            "trainer.max_epochs=2",
            "logging.log_every_n_steps=4",
            "logging.tensorboard=false",
            "logging.progress=off",
            f"logging.run_dir={root / 'runs'}",
        ]
        result = runner.invoke(app, ["fit", str(ROOT / "configs" / f"{name}.yaml"), *overrides])
        assert result.exit_code == 0, result.output
        (runs[name],) = (root / "runs" / name).iterdir()
        assert runner.invoke(app, ["report", str(runs[name])]).exit_code == 0
    out = root / "both.html"
    result = runner.invoke(app, ["report", *(str(p) for p in runs.values()), "-o", str(out)])
    assert result.exit_code == 0, result.output
    runs["both"] = out
    return runs


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, path: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "request",
        lambda r: (
            errors.append(f"fetched {r.url}") if not r.url.startswith(("file:", "data:")) else None
        ),
    )
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors


def heatmap_rows(
    page, selector: str = "svg.heatmap-grad"
) -> tuple[list[list[tuple]], float, float]:
    """The heatmap as drawn: for each layer row, the colours at the centre of each column."""
    from PIL import Image

    svg = page.locator(selector).first
    n_layers = int(svg.get_attribute("data-layers"))
    n_cols = int(svg.get_attribute("data-columns"))
    lo, hi = float(svg.get_attribute("data-log-min")), float(svg.get_attribute("data-log-max"))
    cells = svg.locator("image.heat-cells")
    cells.scroll_into_view_if_needed()
    shot = Image.open(io.BytesIO(cells.screenshot())).convert("RGB")
    rows = []
    for r in range(n_layers):
        y = int((r + 0.5) * shot.height / n_layers)
        rows.append(
            [shot.getpixel((int((c + 0.5) * shot.width / n_cols), y)) for c in range(n_cols)]
        )
    return rows, lo, hi


def value_of(rgb: tuple, lo: float, hi: float) -> float:
    best = min(
        range(1025),
        key=lambda i: sum((a - b) ** 2 for a, b in zip(colour(i / 1024), rgb, strict=True)),
    )
    return 10 ** (lo + best / 1024 * (hi - lo))


def test_report_opens_without_errors_with_every_section(browser, lessons):
    page, errors = open_page(browser, lessons["vanishing_sigmoid_xavier"] / "report.html")
    for section, title in SECTIONS:
        if section != "compare":
            assert page.locator(f"section#{section} h2").inner_text() == title
    assert (
        page.locator("svg.heatmap-grad").count() == 1
        and page.locator("svg.heatmap-update").count() == 1
    )
    page.locator("svg.heatmap-grad image.heat-cells").hover(position={"x": 5, "y": 3})
    tip = page.locator(".heat-wrap").first.locator(".tip")
    assert re.fullmatch(r"net\.0 · step 4 · ‖∇W‖ \d\.\d\de-\d+", tip.inner_text())
    assert errors == []
    page.close()


def test_heatmap_has_one_row_per_layer_with_pixels(browser, lessons):
    page, errors = open_page(browser, lessons["vanishing_sigmoid_xavier"] / "report.html")
    rows, _, _ = heatmap_rows(page)
    layers = read_layer_log(lessons["vanishing_sigmoid_xavier"] / FILENAME).layers
    assert len(rows) == len(layers) == 11
    labels = page.locator("svg.heatmap-grad text.layer-label").all_text_contents()
    assert labels == layers  # forward order, input first
    for row in rows:
        assert all(px != (255, 255, 255) for px in row)  # painted, not blank
    assert errors == []
    page.close()


@pytest.mark.parametrize(
    ("lesson", "decays"), [("vanishing_sigmoid_xavier", True), ("vanishing_relu_kaiming", False)]
)
def test_heatmap_shows_the_decay_with_depth_by_the_measured_factor(
    browser, lessons, lesson, decays
):
    log = read_layer_log(lessons[lesson] / FILENAME)
    page, errors = open_page(browser, lessons[lesson] / "report.html")
    rows, lo, hi = heatmap_rows(page)
    for column in range(len(log.steps)):
        measured = log.grad_norm[column][0] / log.grad_norm[column][-1]  # first layer / last layer
        drawn = value_of(rows[0][column], lo, hi) / value_of(rows[-1][column], lo, hi)
        # the colours encode the ratio to within the colour table's resolution
        assert math.log10(drawn) == pytest.approx(math.log10(measured), abs=0.01 * (hi - lo) + 0.02)
        if decays:
            assert measured < 1e-3 and rows[0][column] != rows[-1][column]
        else:
            assert 0.1 < measured < 10
    assert errors == []
    page.close()


def test_overlay_of_two_runs_has_two_labelled_series(browser, lessons):
    page, errors = open_page(browser, lessons["both"])
    assert page.locator("section#compare").is_visible()
    charts = page.locator("section#curves svg.chart")
    val_loss = next(
        charts.nth(i)
        for i in range(charts.count())
        if charts.nth(i).locator("text.chart-title").text_content() == "loss"
    )
    series = val_loss.locator("path.series")
    labels = [
        series.nth(i).get_attribute("data-label")
        for i in range(series.count())
        if series.nth(i).get_attribute("data-label").endswith("val/loss")
    ]
    assert labels == [
        "activation=sigmoid init=xavier_normal · val/loss",
        "activation=relu init=kaiming_normal · val/loss",
    ]
    legend = val_loss.locator("g.legend-item text").all_text_contents()
    assert all(label in legend for label in labels)
    for i in range(series.count()):
        box = series.nth(i).bounding_box()
        assert box is not None and box["width"] > 50
    assert errors == []
    page.close()
