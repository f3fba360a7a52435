"""``bptrain grad-inspect``: from a config (and optional sweep) to tables, JSON, a plot and an exit code.

This module owns the glue only: it builds data, model, objective and optimizer
exactly as ``fit`` does (same seed, same first batches), hands them to
``inspect_gradients``, and decides the exit code from the flags' severities.
User mistakes (bad sweep syntax, wrong checkpoint) raise ``UserError``.
"""

from __future__ import annotations

import itertools
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from bptrain.checkpoint import load_checkpoint, model_state
from bptrain.components import build_components
from bptrain.config import load_config
from bptrain.diagnostics.analysis import InspectOptions, inspect_gradients
from bptrain.diagnostics.plot import plot, plot_sweep, plot_target, require_matplotlib
from bptrain.diagnostics.render import print_report, sweep_tables
from bptrain.diagnostics.report import SEVERITY_RANK, Report, to_json_dict
from bptrain.errors import EXIT_DIAGNOSTIC_FLAGS, EXIT_OK, UserError
from bptrain.input_gradients import input_gradient_summary
from bptrain.optim import build_optimizer
from bptrain.runtime import resolve_device, seed_everything
from bptrain.search_space import distinct, grid, is_multi_valued, parse_axes
from bptrain.sweep import short_labels

SweepPoint = tuple[str, list[str]]


def sweep_points(arguments: list[str], sweep: list[str]) -> tuple[list[str], list[SweepPoint]]:
    """Split the arguments into plain overrides and axes, and list every grid point as (label, overrides).

    An argument with several values (``model.activation=sigmoid,relu``, the grammar of
    ``bptrain.search_space``) is an axis; any other is a ``KEY=VALUE`` override, as in ``fit``.
    ``sweep`` holds the axes given with the deprecated ``--sweep`` option.
    """
    overrides = [a for a in arguments if not is_multi_valued(a)]
    axes = distinct(
        [
            *parse_axes([a for a in arguments if is_multi_valued(a)]),
            *parse_axes(sweep, where="--sweep"),
        ]
    )
    return overrides, [(_label(combo), list(combo)) for combo in grid(axes)]


def _label(combo: tuple[str, ...]) -> str:
    """``model.activation=relu optimizer.lr=0.1`` -> ``activation=relu lr=0.1``."""
    short = []
    for override in combo:
        key, _, value = override.partition("=")
        short.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(short)


def inspect_config(
    config_path: Path,
    overrides: list[str],
    checkpoint: Path | None,
    batches: int,
    options: InspectOptions,
) -> tuple[Report, int]:
    """Build everything as ``fit`` does and inspect; returns the report and the batches actually used."""
    cfg = load_config(config_path, overrides)
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.seed, False)
    parts = build_components(cfg, device, init_weights=checkpoint is None)
    data, objective, model = parts.data, parts.objective, parts.model
    if parts.step is not objective:
        raise UserError(
            f"grad-inspect replays loss(model(x), y); {type(model).__name__} trains through its "
            "own training_step, which grad-inspect does not support yet. Inspect it with "
            "`bptrain fit` and logging.grad_norms: true instead."
        )
    if checkpoint is not None:
        state = model_state(load_checkpoint(checkpoint, map_location=device), checkpoint)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise UserError(
                f"checkpoint {checkpoint} does not fit the model of {config_path}: {err}"
            ) from None
    data.train.set_epoch(0)
    taken: list[tuple[Any, Any]] = [(x, y) for x, y in itertools.islice(iter(data.train), batches)]
    if not taken:
        raise UserError("the training split has no batches to inspect")
    options = InspectOptions(**{**options.__dict__, "seed": cfg.seed})

    def make_optimizer(m: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg.optimizer, m)

    report = inspect_gradients(
        model, objective.loss, taken, make_optimizer=make_optimizer, options=options
    )
    # the gradient an adversarial attack follows: ∂L/∂x per sample, and what the loss is most sensitive to
    report.input_gradient = input_gradient_summary(
        model, taken, objective, data.input_space, device
    )
    return report, len(taken)


def fails(reports: list[Report], fail_on: str | None) -> bool:
    if fail_on is None:
        return False
    limit = SEVERITY_RANK[fail_on]
    return any(SEVERITY_RANK[f.severity] >= limit for r in reports for f in r.flags)


def write_json(data: dict[str, Any], json_path: Path) -> None:
    text = json.dumps(data, indent=2, allow_nan=False)
    if str(json_path) == "-":
        sys.stdout.write(text + "\n")
        return
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n", encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot write {json_path}: {err}") from None


def run_grad_inspect(
    config_path: Path,
    overrides: list[str],
    *,
    checkpoint: Path | None,
    batches: int,
    json_path: Path | None,
    plot_path: Path | None,
    fail_on: str | None,
    check_gradients: bool,
    sweep: list[str],
    noise: bool,
    curvature: bool,
    console: Console,
) -> int:
    """Returns the exit code: 0, or 3 when flags at/above `fail_on` severity were found."""
    if batches < 1:
        raise UserError("--batches must be at least 1")
    if fail_on not in (None, "warning", "error"):
        raise UserError(f"--fail-on must be warning or error, not {fail_on!r}")
    if plot_path is not None:
        require_matplotlib()  # before the analysis, not after it
        plot_path = plot_target(plot_path)
    options = InspectOptions(check_gradients=check_gradients, noise=noise, curvature=curvature)
    overrides, points = sweep_points(overrides, sweep)
    if sweep:
        console.print(
            "note: --sweep is deprecated: write the axes as arguments, as `bptrain sweep` takes "
            f"them: bptrain grad-inspect {shlex.quote(str(config_path))} {shlex.join(sweep)}",
            markup=False,
            highlight=False,
        )
    results: list[tuple[SweepPoint, Report]] = []
    for point in points:
        report, used = inspect_config(
            config_path, [*overrides, *point[1]], checkpoint, batches, options
        )
        if used < batches:
            console.print(f"note: the training split has only {used} batch(es); inspected {used}.")
        results.append((point, report))
    reports = [r for _, r in results]
    # the table and verdicts name a variant by what tells it apart (the shortest unique key
    # suffix); the plots by its full overrides; the JSON keeps the stable short-key label
    short = short_labels([" ".join(extra) for _, extra in points])
    if len(results) == 1:
        print_report(reports[0], console)
    else:
        for table in sweep_tables(list(zip(short, reports, strict=True)), console.width):
            console.print(table)
        for label, report in zip(short, reports, strict=True):
            console.print(f"[bold]{escape(label)}[/bold]: {report.verdict}", highlight=False)
    if json_path is not None:
        if len(results) == 1:
            data = to_json_dict(reports[0])
        else:
            data = {
                "sweep": [
                    {"label": label, "overrides": extra, "report": to_json_dict(r)}
                    for (label, extra), r in results
                ]
            }
        write_json(data, json_path)
    if plot_path is not None:
        if len(results) == 1:
            console.print(f"plot written to {plot(reports[0], plot_path)}", highlight=False)
        else:
            written = plot_sweep([(" ".join(extra), r) for (_, extra), r in results], plot_path)
            console.print(
                f"plots written: {written[0]} (every variant overlaid), {written[1]} ... "
                f"{written[-1]} (one per variant)",
                highlight=False,
            )
    return EXIT_DIAGNOSTIC_FLAGS if fails(reports, fail_on) else EXIT_OK
