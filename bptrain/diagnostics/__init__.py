"""Gradient diagnostics behind ``bptrain grad-inspect``: why a network does or does not learn.

Public API: ``inspect_gradients`` (the analysis), ``InspectOptions`` and
``Thresholds`` (what to compute, when to flag), ``to_json_dict`` (the stable
JSON), ``print_report`` / ``sweep_table`` (terminal), ``plot`` (PNG). The CLI
entry point is ``bptrain.diagnostics.command.run_grad_inspect``.
"""

from bptrain.diagnostics.analysis import InspectOptions, inspect_gradients
from bptrain.diagnostics.flags import Thresholds
from bptrain.diagnostics.plot import plot
from bptrain.diagnostics.render import print_report, report_table, sweep_table, sweep_tables
from bptrain.diagnostics.report import Flag, LayerReport, Report, to_json_dict

__all__ = [
    "Flag",
    "InspectOptions",
    "LayerReport",
    "Report",
    "Thresholds",
    "inspect_gradients",
    "plot",
    "print_report",
    "report_table",
    "sweep_table",
    "sweep_tables",
    "to_json_dict",
]
