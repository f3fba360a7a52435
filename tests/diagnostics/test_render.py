"""Terminal table, sweep table and PNG plot render from a report."""

from __future__ import annotations

import builtins
import io

import pytest
import torch
from rich.console import Console
from torch import nn

from bptrain.diagnostics import inspect_gradients, plot, print_report, sweep_table
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
