"""Terminal table, sweep table and PNG plot render from a report."""

from __future__ import annotations

import builtins
import io

import pytest
import torch
from rich.console import Console
from torch import nn

from bptrain.diagnostics import inspect_gradients, plot, print_report, sweep_table, sweep_tables
from bptrain.diagnostics.render import log_bar
from bptrain.errors import UserError


def _report(activation: type[nn.Module]):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 8), activation(), nn.Linear(8, 8), activation(), nn.Linear(8, 3)
    )
    generator = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(16, 4, generator=generator),
        torch.randint(0, 3, (16,), generator=generator),
    )
    return inspect_gradients(model, nn.functional.cross_entropy, [batch])


def test_report_and_sweep_tables_render() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)
    print_report(_report(nn.ReLU), console)
    console.print(sweep_table([("sigmoid", _report(nn.Sigmoid)), ("relu", _report(nn.ReLU))]))
    text = out.getvalue()
    assert "verdict:" in text and "sigmoid" in text and "relu" in text and "factor/layer" in text


def test_log_bars_grow_with_log_of_the_value() -> None:
    bars = [log_bar(v).plain for v in (1e-6, 1e-3, 1.0, None, 0.0, float("nan"))]
    assert [b.count("█") for b in bars[:3]] == [2, 5, 8]  # one cell per decade from 1e-8
    assert bars[3] == "" and bars[4].startswith("·") and bars[5] == "?"


def test_plot_writes_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    path = plot(_report(nn.Tanh), tmp_path / "flow.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(UserError, match="pip install matplotlib"):
        plot(_report(nn.Tanh), tmp_path / "flow.png")


@pytest.mark.parametrize("width", [60, 80, 160])
def test_a_sweep_wider_than_the_terminal_is_split_into_tables_that_fit(width: int) -> None:
    """A table wider than the terminal is cut at its right edge: at 80 columns a 2x2 sweep's
    fourth configuration would not be seen. Every configuration shows, every line fits."""
    labels = ["act=sigmoid init=xavier", "act=sigmoid init=kaiming", "act=relu init=xavier",
              "act=relu init=kaiming"]  # fmt: skip
    kinds = [nn.Sigmoid, nn.Sigmoid, nn.ReLU, nn.ReLU]
    reports = [(label, _report(kind)) for label, kind in zip(labels, kinds, strict=True)]
    out = io.StringIO()
    console = Console(file=out, width=width)
    tables = sweep_tables(reports, console.width)
    for table in tables:
        console.print(table)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    flat = " ".join(text.split())
    for label in labels:
        assert all(part in flat for part in label.split()), label
    assert text.count("factor/layer") == len(tables)
    assert (len(tables) > 1) == (width < 160)
    assert flat.count("one cell per decade") == 1  # the legend once, under the last table
