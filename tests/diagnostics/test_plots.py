"""grad-inspect's pictures compare: absolute log bars, PNGs with the reference marked, one sweep figure.

Through the CLI (typer's runner, not a terminal) with tiny configs; the PNG tests catch the real
matplotlib figures as they are saved and read their axes: scale, limits, legend, reference line.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bptrain.cli import app
from bptrain.diagnostics.flags import Reference
from bptrain.diagnostics.render import BAR_DECADES, BAR_WIDTH, log_bar

CONFIG = """\
seed: 0
data: {source: blobs, n_samples: 96, n_features: 6, n_classes: 3, batch_size: 32, normalize: true}
model: {name: mlp, hidden: [16, 16, 16, 16], activation: relu, init: kaiming_normal}
optimizer: {name: sgd, lr: 0.01}
"""
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "blobs.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def grad_inspect(*args: Any) -> Any:
    result = CliRunner().invoke(app, ["grad-inspect", *map(str, args), "--batches", "1"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def saved_figures(monkeypatch) -> list[tuple[Any, Path]]:
    """Every matplotlib figure the command saves, with its path (the real savefig still runs)."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved: list[tuple[Any, Path]] = []
    real_savefig = Figure.savefig

    def capture(self: Any, fname: Any, *args: Any, **kwargs: Any) -> Any:
        saved.append((self, Path(fname)))
        return real_savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    return saved


def full_cells(bar: str) -> int:
    return bar.count("█")


def test_bars_are_on_one_absolute_log_scale() -> None:
    ref = Reference(0.1, 1e-3, 10.0)
    # 0.10 and 0.12 are in the same decade: the same bar (a min-to-max scale drew 1 and 10 cells)
    assert full_cells(log_bar(0.10, ref).plain) == full_cells(log_bar(0.12, ref).plain) == 7
    assert len(log_bar(0.10, ref).plain) == len(log_bar(0.12, ref).plain) == BAR_WIDTH
    # one cell per decade, whatever else is in the table
    assert full_cells(log_bar(1e-3, ref).plain) == full_cells(log_bar(1e-1, ref).plain) - 2
    assert full_cells(log_bar(10.0 ** BAR_DECADES[0] * 10, ref).plain) == 1
    assert log_bar(1e5, ref).plain.endswith("▸") and log_bar(1e-12, ref).plain.startswith("◂")
    # the empty part shows the reference (│, in 0.1's decade) and the band around it (░)
    empty = log_bar(1e-6, ref).plain
    assert len(empty) == BAR_WIDTH and empty[-BAR_DECADES[0] - 1] == "│"
    assert empty.count("░") == 3  # decades 1e-3, 1e-2 and 1 (1e-1 holds the │)
    assert log_bar(1e-6, ref).style == "yellow" and log_bar(0.1, ref).style == "green"
    assert log_bar(1e3, ref).style == "red"


def _signal_bars(output: str) -> dict[str, str]:
    """layer -> the bar of the ‖∂L/∂out‖ column in the piped table."""
    bars = {}
    for line in output.splitlines():
        match = re.match(rf"│(net\.\d+)\s*│[^│]*│[^│]*│ *[0-9.e+-]+ (.{{{BAR_WIDTH}}})", line)
        if match:
            bars[match.group(1)] = match.group(2)
    return bars


def test_console_bars_of_a_healthy_and_a_vanishing_net_compare(config: Path) -> None:
    healthy = grad_inspect(config)
    sick = grad_inspect(config, "model.activation=sigmoid", "model.init=xavier_normal")
    assert healthy.exit_code == 0 and sick.exit_code == 0
    good, bad = _signal_bars(healthy.output), _signal_bars(sick.output)
    assert list(good) == list(bad) == ["net.0", "net.2", "net.4", "net.6", "net.8"]
    # healthy: every layer's signal is in the decades of the output layer's: bars within a cell
    assert max(map(full_cells, good.values())) - min(map(full_cells, good.values())) <= 1
    # sigmoid + Xavier loses ~4x per layer: the first layer's bar is shorter than the last's
    assert full_cells(bad["net.0"]) < full_cells(bad["net.8"])
    # the same scale in both tables: the output layers (same loss, similar signal) draw alike
    assert abs(full_cells(good["net.8"]) - full_cells(bad["net.8"])) <= 1
    assert "│" in good["net.0"] + good["net.2"] or "░" in good["net.0"]
    assert "one cell per decade from 1e-8 to 1e2" in healthy.output


def _reference_lines(ax: Any) -> list[Any]:
    return [line for line in ax.get_lines() if line.get_gid() == "reference"]


def _y_span(patch: Any) -> tuple[float, float]:
    """axhspan's y extent in data units (a Rectangle since matplotlib 3.9, a Polygon before)."""
    if hasattr(patch, "get_height"):
        return patch.get_y(), patch.get_y() + patch.get_height()
    ys = patch.get_xy()[:, 1]
    return float(min(ys)), float(max(ys))


def test_plot_is_on_whole_decades_with_the_reference_and_band(
    config: Path, tmp_path: Path, saved_figures
) -> None:
    png, report = tmp_path / "flow.png", tmp_path / "flow.json"
    assert grad_inspect(config, "--plot", png, "--json", report).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ((figure, path),) = saved_figures
    assert path == png
    (ax,) = figure.axes
    assert ax.get_yscale() == "log"
    low, high = ax.get_ylim()
    assert math.log10(low).is_integer() and math.log10(high).is_integer()
    signal = json.loads(report.read_text())["layers"][-1]["signal_norm"]
    (line,) = _reference_lines(ax)
    assert line.get_ydata()[0] == pytest.approx(signal)
    (band,) = [p for p in ax.patches if p.get_gid() == "healthy-band"]
    bottom, top = _y_span(band)
    assert bottom == pytest.approx(signal * 1e-2) and top == pytest.approx(signal * 1e2)
    assert low <= signal * 1e-2 and signal * 1e2 <= high
    plotted = [y for line in ax.get_lines() if line.get_gid() is None for y in line.get_ydata()]
    assert all(low <= y <= high for y in plotted)


def test_sweep_writes_one_overlay_and_one_titled_file_per_variant_on_one_range(
    config: Path, tmp_path: Path, saved_figures
) -> None:
    png = tmp_path / "sweep.png"
    result = grad_inspect(config, "model.activation=sigmoid,relu", "--plot", png)
    assert result.exit_code == 0, result.output
    paths = [path for _, path in saved_figures]
    assert paths == [png, tmp_path / "sweep-0.png", tmp_path / "sweep-1.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    overlay = saved_figures[0][0]
    signal_ax = overlay.axes[0]
    labels = [t.get_text() for t in signal_ax.get_legend().get_texts()]
    assert labels == ["model.activation=sigmoid", "model.activation=relu"]
    assert len(_reference_lines(signal_ax)) == 2  # each variant's reference, in its colour
    titles = [figure.axes[0].get_title() for figure, _ in saved_figures[1:]]
    assert titles == [
        "grad-inspect: model.activation=sigmoid",
        "grad-inspect: model.activation=relu",
    ]
    every_axes = [ax for figure, _ in saved_figures for ax in figure.axes]
    assert all(ax.get_yscale() == "log" for ax in every_axes)
    assert len({ax.get_ylim() for ax in every_axes}) == 1  # one shared y range
    # the range holds both variants' curves (sigmoid's small signals included)
    low, high = every_axes[0].get_ylim()
    curves = [line for line in signal_ax.get_lines() if line.get_gid() is None]
    assert len(curves) == 2
    assert all(low <= y <= high for line in curves for y in line.get_ydata())


def test_piped_sweep_table_names_variants_by_what_differs(config: Path) -> None:
    result = grad_inspect(config, "optimizer.lr=0.1,0.01,0.001", "optimizer.momentum=0.0,0.9")
    assert result.exit_code == 0, result.output
    header = result.output.split("┡")[0]
    assert "…" not in header and "optim" not in header
    for part in ("lr=0.1", "lr=0.001", "momentum=0.0", "momentum=0.9"):
        assert part in header
    assert "lr=0.01 momentum=0.9:" in result.output  # the verdict lines use the same labels


@pytest.mark.parametrize(
    ("config_name", "overrides", "option", "expected"),
    [
        # the CNN cast its input to float32: the float64 finite-difference copy crashed
        ("cnn_digits.yaml", ["model.channels=[4]"], "--check-gradients", "fd err"),
        # flash attention has no double backward: the Hessian-vector products crashed
        (
            "transformer_majority.yaml",
            ["model.d_model=8", "model.num_heads=2", "model.num_layers=1", "data.n_samples=64"],
            "--curvature",
            "curvature: λmax",
        ),
        # vmap cannot batch nn.GRU: per-sample gradients crashed
        (
            "copy_memory.yaml",
            ["model.hidden_size=8", "data.n_samples=64"],
            "--noise",
            "gradient noise (8 samples)",
        ),
    ],
)
def test_every_option_works_on_the_shipped_models(
    config_name: str, overrides: list[str], option: str, expected: str
) -> None:
    result = grad_inspect(CONFIGS / config_name, *overrides, "data.batch_size=8", option)
    assert result.exit_code == 0, result.output
    assert expected in result.output


def test_plot_paths_are_checked_before_the_analysis(config: Path, tmp_path: Path) -> None:
    """A format matplotlib cannot write, or a folder that is a file, exits 2 at once (it was a
    traceback after the whole analysis); a path without a suffix gets .png, and says so."""
    pytest.importorskip("matplotlib")
    refused = CliRunner().invoke(
        app, ["grad-inspect", str(config), "--plot", str(tmp_path / "f.v2")]
    )
    assert refused.exit_code == 2 and "cannot write .v2 files" in refused.output, refused.output
    (tmp_path / "afile").write_text("")
    inside_a_file = CliRunner().invoke(
        app, ["grad-inspect", str(config), "--plot", str(tmp_path / "afile" / "x.png")]
    )
    assert inside_a_file.exit_code == 2 and "is a file, not a folder" in inside_a_file.output
    plain = grad_inspect(config, "--plot", tmp_path / "flow")
    assert (tmp_path / "flow.png").read_bytes()[:4] == b"\x89PNG"
    assert "flow.png" in plain.output
