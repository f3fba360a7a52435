"""``bptrain sweep``: train every combination of a few config values (and seeds) and compare them.

Each variant is a normal run (config.yaml, metrics.jsonl, summary.json, tb/) under one parent,
``<logging.run_dir>/<name>-sweep/<variant>/<timestamp>/``, so ``tensorboard --logdir`` on the
parent overlays them. A variant that fails is reported in the table and the sweep goes on. A
sweep started again with the same config skips the variants that finished (same resolved
config, summary.json written) and resumes interrupted ones from their last checkpoint.

Variants run in this process with ``--jobs 1`` (exceptions are caught per variant) and as
``python -m bptrain fit`` subprocesses with more jobs, each with an equal share of the CPU
threads so parallel runs do not oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bptrain.config import Config, load_config, to_yaml
from bptrain.errors import UserError
from bptrain.runlog import dumps
from bptrain.search_space import Axis, grid, parse_axes, split_values


@dataclass
class Variant:
    """One run of the sweep: the grid values it takes and its seed."""

    values: tuple[str, ...]  # "key=value" overrides from the grid
    seed: int | None
    label: str = ""  # the grid values, shared by the seeds of one grid point

    @property
    def overrides(self) -> list[str]:
        return [*self.values, *([f"seed={self.seed}"] if self.seed is not None else [])]

    @property
    def slug(self) -> str:
        """Directory name: the overrides with anything unsafe for a path replaced."""
        text = "__".join(self.overrides) or "base"
        return re.sub(r"[^A-Za-z0-9_.=,+-]+", "-", text)[:200]


@dataclass
class Outcome:
    variant: Variant
    status: str  # completed (or another summary status), failed, skipped (already done)
    summary: dict[str, Any] | None = None
    error: str | None = None
    run_dir: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def parse_sweep_axes(arguments: list[str]) -> list[Axis]:
    """The command's KEY=V1,V2,... arguments (the grammar is ``search_space``'s); seeds go to --seeds."""
    axes = parse_axes(arguments)
    if any(axis.key == "seed" for axis in axes):
        raise UserError(
            "sweep over seeds with --seeds 0,1,2 (they become mean ± std), not seed=..."
        )
    return axes


def parse_seeds(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    try:
        return [int(s) for s in split_values(text)]
    except ValueError:  # not an integer, or an unclosed bracket
        raise UserError(
            f"--seeds {text}: expected integers separated by commas, e.g. 0,1,2."
        ) from None


def expand(axes: list[Axis], seeds: list[int | None]) -> list[Variant]:
    """The full grid (first axis slowest), each grid point repeated for every seed."""
    variants = []
    for combo in grid(axes):
        for seed in seeds:
            variants.append(Variant(tuple(combo), seed, label=" ".join(combo) or "(base)"))
    return variants


def sweep_dir_for(cfg: Config) -> Path:
    return cfg.logging.run_dir / f"{cfg.logging.name or 'run'}-sweep"


def run_sweep(
    config: Path,
    axes: list[str],
    overrides: list[str],
    seeds: str | None,
    jobs: int,
    console: Console,
) -> tuple[list[dict[str, Any]], Path]:
    """Run (or resume) the sweep; return the comparison rows and the sweep directory."""
    base = load_config(config, overrides)  # a bad base config is a usage error for the whole sweep
    root = sweep_dir_for(base)
    variants = expand(parse_sweep_axes(axes), parse_seeds(seeds))
    root.mkdir(parents=True, exist_ok=True)
    console.print(f"sweep of {len(variants)} run(s) under {root}")

    def run_one(index: int, variant: Variant) -> Outcome:
        outcome = _run_variant(config, overrides, variant, root, jobs)
        _report(console, index, len(variants), outcome)
        return outcome

    if jobs <= 1:
        outcomes = [run_one(i, v) for i, v in enumerate(variants, 1)]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(run_one, range(1, len(variants) + 1), variants))
    rows = aggregate(outcomes)
    write_tables(root, rows, outcomes)
    print_table(console, rows)
    console.print(f"wrote {root}/sweep.csv, sweep.json, sweep.md; tensorboard --logdir {root}")
    return rows, root


def _run_variant(
    config: Path, base_overrides: list[str], variant: Variant, root: Path, jobs: int
) -> Outcome:
    overrides = [
        *base_overrides,
        *variant.overrides,
        f"logging.run_dir={root}",
        f"logging.name={variant.slug}",
    ]
    try:
        cfg = load_config(config, overrides)
    except UserError as err:
        return Outcome(variant, "failed", error=str(err))
    config_text = to_yaml(cfg)
    finished = finished_run(root / variant.slug, config_text)
    if finished is not None:
        return _outcome_from(variant, finished, status="skipped")
    resume = interrupted_run(root / variant.slug, config_text)
    if jobs <= 1:
        # imported here: with --jobs > 1 the variants are subprocesses and this one never loads torch
        from bptrain.train import Interrupted, fit

        log_path = root / f"{variant.slug}.log"
        try:  # the run's console output goes to its log, as with subprocesses
            with log_path.open("w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
                summary = fit(cfg, Console(file=log, width=120), resume=resume)
        except Interrupted:
            raise  # the whole sweep stops; run it again to resume
        except Exception as err:  # one bad variant must not end the sweep
            return Outcome(variant, "failed", error=f"{type(err).__name__}: {err}")
        return _outcome_from(variant, Path(summary["run_dir"]))
    return _run_subprocess(config, overrides, variant, root, jobs, resume)


def _run_subprocess(
    config: Path, overrides: list[str], variant: Variant, root: Path, jobs: int, resume: str | None
) -> Outcome:
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    log_path = root / f"{variant.slug}.log"
    command = [sys.executable, "-m", "bptrain", "fit", str(config), *overrides]
    if resume is not None:
        command += ["--resume", resume]
    with log_path.open("w", encoding="utf-8") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    runs = sorted((root / variant.slug).glob("*/summary.json"))
    if code == 0 and runs:
        return _outcome_from(variant, runs[-1].parent)
    tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
    return Outcome(variant, "failed", error=f"exit {code}: {' | '.join(tail)} (log: {log_path})")


def finished_run(variant_dir: Path, config_text: str) -> Path | None:
    """The newest run of this variant that wrote summary.json with exactly this config, if any."""
    for summary in sorted(variant_dir.glob("*/summary.json"), reverse=True):
        saved = summary.parent / "config.yaml"
        if saved.is_file() and saved.read_text(encoding="utf-8") == config_text:
            return summary.parent
    return None


def interrupted_run(variant_dir: Path, config_text: str) -> str | None:
    """The newest run of this variant with this config that saved a checkpoint but no summary."""
    for last in sorted(variant_dir.glob("*/checkpoints/last.pt"), reverse=True):
        run_dir = last.parent.parent
        saved = run_dir / "config.yaml"
        if (
            not (run_dir / "summary.json").exists()
            and saved.is_file()
            and saved.read_text(encoding="utf-8") == config_text
        ):
            return str(run_dir)
    return None


def _outcome_from(variant: Variant, run_dir: Path, status: str | None = None) -> Outcome:
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return Outcome(
        variant,
        status or summary.get("status", "completed"),
        summary=summary,
        run_dir=str(run_dir),
        metrics=run_metrics(summary),
    )


def run_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers compared across variants: final metrics (val/loss...), the best validation
    metrics (best val/loss...) and the epoch they came from, test metrics, wall time."""
    metrics: dict[str, float] = {}
    for key, value in (summary.get("final") or {}).items():
        if "/" in key and isinstance(value, int | float):
            metrics[key] = float(value)
    best = summary.get("best") or {}
    for key, value in best.items():
        if key.startswith("val/") and isinstance(value, int | float):
            metrics[f"best {key}"] = float(value)
    if "epoch" in best:
        metrics["best epoch"] = float(best["epoch"])
    for key, value in (summary.get("test") or {}).items():
        if isinstance(value, int | float):
            metrics[key] = float(value)
    metrics["wall s"] = float(summary.get("wall_time_s", math.nan))
    return metrics


def aggregate(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One row per grid point: mean and std over its seeds of every metric, and what failed."""
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome.variant.label, []).append(outcome)
    rows = []
    for label, members in groups.items():
        done = [m for m in members if m.summary is not None]
        failed = [m for m in members if m.summary is None]
        row: dict[str, Any] = {
            "variant": label,
            "runs": len(members),
            "ok": len(done),
            "status": "ok" if not failed else ("failed" if not done else "partly failed"),
            "error": failed[0].error if failed else "",
        }
        keys = list(dict.fromkeys(k for m in done for k in m.metrics))
        for key in keys:
            values = [
                m.metrics[key] for m in done if key in m.metrics and math.isfinite(m.metrics[key])
            ]
            row[key] = statistics.fmean(values) if values else math.nan
            row[f"{key} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def _metric_keys(rows: list[dict[str, Any]]) -> list[str]:
    fixed = {"variant", "runs", "ok", "status", "error"}
    keys = [k for row in rows for k in row if k not in fixed and not k.endswith(" std")]
    return list(dict.fromkeys(keys))


def _fmt(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    digits = 1 if key in ("wall s", "best epoch") else 4
    text = f"{value:.{digits}f}"
    if row.get("ok", 0) > 1:
        text += f" ± {row.get(f'{key} std', 0.0):.{digits}f}"
    return text


def write_tables(root: Path, rows: list[dict[str, Any]], outcomes: list[Outcome]) -> None:
    """sweep.csv (mean and std columns), sweep.json (rows and every run), sweep.md (mean ± std)."""
    keys = _metric_keys(rows)
    columns = ["variant", "runs", "ok", "status"]
    for key in keys:
        columns += [key, f"{key} std"]
    columns.append("error")
    with (root / "sweep.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    runs = [
        {
            "variant": o.variant.label,
            "seed": o.variant.seed,
            "overrides": o.variant.overrides,
            "status": o.status,
            "run_dir": o.run_dir,
            "error": o.error,
            "metrics": o.metrics,
        }
        for o in outcomes
    ]
    (root / "sweep.json").write_text(
        dumps({"rows": rows, "runs": runs}, indent=2) + "\n", encoding="utf-8"
    )
    header = ["variant", "ok", *keys, "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["variant"], f"{row['ok']}/{row['runs']}", *(_fmt(row, k) for k in keys)]
        status = row["status"] if not row["error"] else f"{row['status']}: {row['error']}"
        cells.append(status.replace("|", "/").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    (root / "sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def short_labels(labels: list[str]) -> list[str]:
    """Variant labels cut to what tells them apart, for a table that fits the terminal.

    'optimizer.name=sgd optimizer.lr=0.1' -> 'name=sgd lr=0.1': a swept key keeps the shortest
    dotted suffix that no other swept key shares, and a key with the same value in every
    variant is dropped. The files (sweep.csv, .json, .md) keep the full labels.
    """
    split = [
        [part.split("=", 1) for part in re.split(r" (?=[A-Za-z_][\w.]*=)", label) if "=" in part]
        for label in labels
    ]
    keys = list(dict.fromkeys(key for parts in split for key, _ in parts))
    values = {key: {dict(parts).get(key) for parts in split} for key in keys}
    differing = [key for key in keys if len(values[key]) > 1] or keys

    def suffix(key: str) -> str:
        names = key.split(".")
        for n in range(1, len(names) + 1):
            tail = ".".join(names[-n:])
            if not any(
                other != key and (other == tail or other.endswith("." + tail)) for other in keys
            ):
                return tail
        return key

    short = []
    for label, parts in zip(labels, split, strict=True):
        kept = [f"{suffix(key)}={value}" for key, value in parts if key in differing]
        short.append(" ".join(kept) if parts else label)
    return short


def print_table(console: Console, rows: list[dict[str, Any]]) -> None:
    """The terminal table: validation metrics, epochs to the best and time (the files have all)."""
    keys = [k for k in _metric_keys(rows) if "val/" in k or k in ("best epoch", "wall s")]
    from rich import box

    # light rules, no vertical borders: the numbers get the room
    table = Table(
        title="sweep (mean ± std over seeds)",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    labels = short_labels([row["variant"] for row in rows])
    # a variant wraps between its key=value parts, never inside one
    widest_part = max((len(part) for label in labels for part in label.split()), default=7)
    show_status = any(row["status"] != "completed" for row in rows)  # else `ok` says it all
    for column in ["variant", "ok", *keys, *(["status"] if show_status else [])]:
        table.add_column(
            column,
            justify="left" if column in ("variant", "status") else "right",
            overflow="fold",  # a long value wraps inside its cell instead of ending in '…'
            min_width=min(widest_part, console.width // 3) if column == "variant" else None,
        )
    for row, label in zip(rows, labels, strict=True):
        status = [row["status"]] if show_status else []
        table.add_row(label, f"{row['ok']}/{row['runs']}", *(_fmt(row, k) for k in keys), *status)
    console.print(table)
    for row in rows:
        if row["error"]:
            console.print(f"{row['variant']}: {row['error']}", markup=False, style="red")


def _report(console: Console, index: int, total: int, outcome: Outcome) -> None:
    name = " ".join(outcome.variant.overrides) or "(base)"
    if outcome.summary is None:
        console.print(f"[{index}/{total}] {name}: failed", markup=False)
        return
    shown = {k: v for k, v in outcome.metrics.items() if k.startswith("val/")}
    text = ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
    console.print(
        f"[{index}/{total}] {name}: {outcome.status} {text} ({outcome.metrics.get('wall s', 0):.1f} s)",
        markup=False,
    )
