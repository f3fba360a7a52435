"""Benchmarks: bptrain against an equivalent hand-written PyTorch loop, in one command.

    python scripts/bench.py            # the full table, 3-4 minutes on 2 CPU cores
    python scripts/bench.py --quick    # about 75 s, fewer steps and repetitions
    python scripts/bench.py --markdown results.md --json results.json

Every comparison runs both sides in the same invocation, alternating (A B, B A, ...) over
several repetitions, and reports medians and the ratio bptrain / hand-written. The
hand-written loop is ``scripts/bench_handwritten.py``: the same data file, network,
initialisation, optimizer, batch size, steps and seed, so both runs end at the same loss
(checked and printed). What it does not do is bptrain's machinery: config validation, the
run directory, the fsynced atomic checkpoint, resume state, the console summary.

Timings on a shared machine are noisy. Each process runs with ``--threads`` intra-op
threads (default 1): with two threads on two busy cores, oversubscription makes step times
vary tenfold, and the overhead under test does not depend on the thread count. Timings
live here and in docs/benchmarks.md, never in unit tests.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent


@dataclass
class Row:
    """One line of the results table."""

    section: str
    name: str
    bptrain: float | None
    handwritten: float | None = None
    unit: str = ""
    budget: str = ""
    ok: bool | None = None
    note: str = ""
    pair_ratio: float | None = None  # set when pairs of runs give a better ratio than two medians

    @property
    def ratio(self) -> float | None:
        if self.pair_ratio is not None:
            return self.pair_ratio
        if self.bptrain is None or not self.handwritten:
            return None
        return self.bptrain / self.handwritten


@dataclass
class Settings:
    quick: bool
    threads: int
    work: Path
    env: dict[str, str] = field(default_factory=dict)

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


# --------------------------------------------------------------------------- helpers


def median(values: list[float]) -> float:
    return statistics.median(values)


def bptrain_command() -> list[str]:
    """The ``bptrain`` console script next to this Python (what users run), else ``python -m bptrain``."""
    script = Path(sys.executable).with_name("bptrain")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bptrain"]


def run_process(cmd: list[str], settings: Settings, cwd: Path | None = None) -> dict[str, float]:
    """Run a command to completion; return its wall time, CPU time and peak RSS (this process only)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd or settings.work,
        env=settings.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
    }


def epoch_records(metrics: Path) -> list[dict[str, Any]]:
    lines = metrics.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == "epoch"]


def steady_step_ms(records: list[dict[str, Any]], steps_per_epoch: int) -> float:
    """Median wall time of one epoch after the first (warm-up), per optimizer step, in ms.

    An epoch here is everything the loop does: the steps, logging, validation and the checkpoint.
    """
    times = [r["time"] for r in records]  # seconds since training started, at each epoch's end
    per_epoch = [b - a for a, b in itertools.pairwise(times)]
    return median(per_epoch) / steps_per_epoch * 1000


def paired(a: list[float], b: list[float]) -> float:
    """Median of per-repetition ratios a[i] / b[i]: runs of one repetition saw nearly the same load."""
    return median([x / y for x, y in zip(a, b, strict=True)])


def alternate(reps: int, runners: dict[str, Callable[[int], Any]]) -> dict[str, list[Any]]:
    """Run every runner `reps` times, rotating the order each repetition so drift hits all alike."""
    names = list(runners)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(runners[name](rep))
    return results


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- data and configs


def make_data(work: Path) -> dict[str, Path]:
    """Two seeded npz files: 40-feature tabular data, and 1x28x28 images of 10 noisy class templates."""
    import numpy as np

    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, (10, 40))
    y = rng.integers(0, 10, 18_000)
    x = (centres[y] + rng.normal(0.0, 2.0, (18_000, 40))).astype(np.float32)
    mlp = work / "mlp.npz"
    np.savez(mlp, x=x[:16_000], y=y[:16_000], x_val=x[16_000:], y_val=y[16_000:])

    templates = rng.normal(0.0, 1.0, (10, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 2_560)
    x = (templates[y] + rng.normal(0.0, 1.5, (2_560, 1, 28, 28))).astype(np.float32)
    cnn = work / "cnn.npz"
    np.savez(cnn, x=x[:2_048], y=y[:2_048], x_val=x[2_048:], y_val=y[2_048:])
    return {"mlp": mlp, "cnn": cnn}


def mlp_config(work: Path, data: Path, epochs: int, name: str = "mlp") -> Path:
    return write_yaml(
        work / f"{name}.yaml",
        f"""
seed: 0
data: {{source: npz, path: {data}, batch_size: 64}}
model: {{name: mlp, hidden: [256, 256]}}
optimizer: {{name: adamw, lr: 1.0e-3, weight_decay: 0.01}}
trainer: {{max_epochs: {epochs}}}
logging: {{run_dir: {work / "runs"}, name: {name}}}
""",
    )


def cnn_config(work: Path, data: Path, epochs: int) -> Path:
    # No built-in cnn model yet: the network comes from scripts/bench_models.py by class_path.
    return write_yaml(
        work / "cnn.yaml",
        f"""
seed: 0
data: {{source: npz, path: {data}, batch_size: 64}}
model: {{class_path: bench_models.SmallCNN, init_args: {{in_channels: 1, image_size: 28, num_classes: 10}}}}
optimizer: {{name: adamw, lr: 1.0e-3, weight_decay: 0.01}}
trainer: {{max_epochs: {epochs}}}
logging: {{run_dir: {work / "runs"}, name: cnn}}
""",
    )


def newest_run(work: Path, name: str) -> Path:
    return sorted((work / "runs" / name).iterdir())[-1]


# --------------------------------------------------------------------------- 1-2: whole process and steady state


def compare_training(
    settings: Settings,
    section: str,
    model: str,
    config: Path,
    data: Path,
    epochs: int,
    steps_per_epoch: int,
    reps: int,
    device: str,
) -> list[Row]:
    """`bptrain fit` vs `python bench_handwritten.py`: whole-process wall time, steady-state step, peak RSS."""
    overrides = [f"trainer.device={device}", f"logging.name={model}"]

    def bptrain(rep: int) -> dict[str, Any]:
        result = run_process([*bptrain_command(), "fit", str(config), *overrides], settings)
        records = epoch_records(newest_run(settings.work, model) / "metrics.jsonl")
        return {
            **result,
            "step_ms": steady_step_ms(records, steps_per_epoch),
            "loss": records[-1]["train/loss"],
        }

    def handwritten(rep: int) -> dict[str, Any]:
        out = settings.work / f"hw-{model}"
        cmd = [
            sys.executable,
            str(SCRIPTS / "bench_handwritten.py"),
            f"--data={data}",
            f"--model={model}",
            f"--epochs={epochs}",
            f"--device={device}",
            "--tensorboard",
            f"--out={out}",
        ]
        result = run_process(cmd, settings)
        records = epoch_records(out / "metrics.jsonl")
        return {
            **result,
            "step_ms": steady_step_ms(records, steps_per_epoch),
            "loss": records[-1]["train/loss"],
        }

    runs = alternate(reps, {"bptrain": bptrain, "handwritten": handwritten})
    bp, hw = runs["bptrain"], runs["handwritten"]
    same = bp[-1]["loss"] == hw[-1]["loss"]
    note = f"final train/loss {bp[-1]['loss']:.6g} vs {hw[-1]['loss']:.6g} ({'identical' if same else 'DIFFERENT'})"
    steps = epochs * steps_per_epoch
    wall = Row(
        section,
        f"whole process, {steps} steps (wall)",
        median([r["wall"] for r in bp]),
        median([r["wall"] for r in hw]),
        "s",
        note=note,
        pair_ratio=paired([r["wall"] for r in bp], [r["wall"] for r in hw]),
    )
    cpu = Row(
        section,
        "whole process (CPU time)",
        median([r["cpu"] for r in bp]),
        median([r["cpu"] for r in hw]),
        "s",
        pair_ratio=paired([r["cpu"] for r in bp], [r["cpu"] for r in hw]),
    )
    step = Row(
        section,
        "steady-state step (epochs 2+, wall)",
        median([r["step_ms"] for r in bp]),
        median([r["step_ms"] for r in hw]),
        "ms",
        pair_ratio=paired([r["step_ms"] for r in bp], [r["step_ms"] for r in hw]),
    )
    rss_bp, rss_hw = median([r["rss_mb"] for r in bp]), median([r["rss_mb"] for r in hw])
    rss = Row(section, "peak RSS", rss_bp, rss_hw, "MB", note=f"+{rss_bp - rss_hw:.0f} MB")
    return [wall, cpu, step, rss]


def inprocess_steady(
    settings: Settings,
    section: str,
    model: str,
    config: Path,
    data: Path,
    steps_per_epoch: int,
    reps: int,
    device: str,
) -> Row:
    """Steady-state step time in one process: pairs of 2-epoch runs, the second epoch timed.

    Each bptrain run is paired with the hand-written run right after (or before) it, and the
    ratio is the median of the per-pair ratios: on a shared machine the load drifts over
    seconds, and a pair of runs a second apart sees nearly the same load.
    """
    import contextlib

    import bench_handwritten
    from rich.console import Console

    from bptrain.config import load_config
    from bptrain.train import fit

    def second_epoch_ms(metrics: Path) -> float:
        first, second = (r["time"] for r in epoch_records(metrics)[:2])
        return (second - first) / steps_per_epoch * 1000

    def bptrain(rep: int) -> float:
        overrides = ["trainer.max_epochs=2", f"trainer.device={device}", "logging.progress=plain"]
        cfg = load_config(config, [*overrides, f"logging.name={model}-inproc"])
        with contextlib.redirect_stdout(io.StringIO()):
            summary = fit(cfg, Console(file=io.StringIO()))
        return second_epoch_ms(Path(summary["run_dir"]) / "metrics.jsonl")

    def handwritten(rep: int) -> float:
        out = settings.work / f"hw-{model}-inproc"
        argv = [f"--data={data}", f"--model={model}", "--epochs=2", f"--device={device}"]
        with contextlib.redirect_stdout(io.StringIO()):
            bench_handwritten.main([*argv, "--tensorboard", f"--out={out}"])
        return second_epoch_ms(out / "metrics.jsonl")

    runs = alternate(reps, {"bptrain": bptrain, "handwritten": handwritten})
    pairs = [a / b for a, b in zip(runs["bptrain"], runs["handwritten"], strict=True)]
    return Row(
        section,
        f"steady-state step (in-process, {reps} pairs)",
        median(runs["bptrain"]),
        median(runs["handwritten"]),
        "ms",
        pair_ratio=median(pairs),
        note=f"median of per-pair ratios; pairs range {min(pairs):.2f}-{max(pairs):.2f}",
    )


def lockstep(settings: Settings, config: Path) -> list[Row]:
    """bptrain's ``train_step`` and a hand-written step, alternating step by step.

    Two identical models train side by side on the same batches; every step of one is timed
    right after a step of the other, so both see the same load, and the medians over hundreds
    of steps resolve differences of a few microseconds. The second pair of rows adds what a
    log step adds in ``fit`` (the gradient norm, the step record in metrics.jsonl).
    """
    import torch
    import torch.nn.functional as F

    from bptrain.config import load_config
    from bptrain.data import build_data
    from bptrain.faults import NonFiniteGuard
    from bptrain.losses import build_objective
    from bptrain.models import build_model
    from bptrain.optim import build_optimizer
    from bptrain.runlog import RunLog
    from bptrain.runtime import Precision
    from bptrain.train import _step_metrics, train_step

    cfg = load_config(config, ["trainer.device=cpu"])
    device = torch.device("cpu")
    data = build_data(cfg.data, seed=cfg.seed, device=device)
    objective = build_objective(cfg.loss, data.spec)
    precision = Precision.create("32", device)

    def setup() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model(cfg.model, data.spec, objective.name)
        return model, build_optimizer(cfg.optimizer, model)

    (ours, our_opt), (theirs, their_opt) = setup(), setup()
    out = settings.work / "lockstep"
    out.mkdir(exist_ok=True)
    log = RunLog(out, tensorboard=False)
    # what fit passes to train_step: trainer.nan_policy's check (on CPU: every step, eagerly)
    guard = NonFiniteGuard(
        cfg.trainer.nan_policy, cfg.trainer.max_skipped_steps, device, precision.scaler.is_enabled()
    )
    (settings.work / "lockstep-tb").mkdir(exist_ok=True)
    tb_log = RunLog(settings.work / "lockstep-tb", tensorboard=True)
    progress = type("P", (), {"epoch": 0})()

    def bptrain_step(x: torch.Tensor, y: torch.Tensor, logged: bool, to: Any = log) -> float:
        """What fit does for one step: train_step, and at a log step the norm and the record."""
        start = time.perf_counter()
        result = train_step(
            ours, [(x, y)], objective, our_opt, precision, cfg.trainer.grad_clip, logged, guard
        )
        if logged:
            to.log("step", 1, _step_metrics(progress, result, our_opt, precision, guard)[0])
        return time.perf_counter() - start

    def hand_step(x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(theirs(x), y)
        loss.backward()
        their_opt.step()
        their_opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"bptrain": [], "hand": [], "logged": [], "plain": [], "tb": []}
    steps = settings.pick(1500, 500)
    batches = iter(())
    for i in range(steps + 50):
        try:
            x, y = next(batches)
        except StopIteration:
            data.train.set_epoch(i)
            batches = iter(data.train)
            x, y = next(batches)
        if i % 2:  # which of a pair goes first alternates
            mine, hand = bptrain_step(x, y, False), hand_step(x, y)
            logged, plain, tb = (
                bptrain_step(x, y, True),
                bptrain_step(x, y, False),
                bptrain_step(x, y, True, tb_log),
            )
        else:
            hand, mine = hand_step(x, y), bptrain_step(x, y, False)
            tb, plain, logged = (
                bptrain_step(x, y, True, tb_log),
                bptrain_step(x, y, False),
                bptrain_step(x, y, True),
            )
        if i >= 50:  # warm-up: optimizer state, allocator
            for key, value in zip(times, (mine, hand, logged, plain, tb), strict=True):
                times[key].append(value)
    log.close()
    tb_log.close()
    us = {k: median(v) * 1e6 for k, v in times.items()}
    extra = us["logged"] - us["plain"]
    default = 1 + extra / 50 / us["plain"]
    return [
        Row(
            "step",
            f"train_step vs hand-written step ({steps} lockstep pairs)",
            us["bptrain"],
            us["hand"],
            "us",
            "<= 1.03",
            us["bptrain"] / us["hand"] <= 1.03,
            note="forward, backward and AdamW step of the MLP; medians",
        ),
        Row(
            "logging",
            "log every step: grad norm + metrics.jsonl line vs no log",
            us["logged"],
            us["plain"],
            "us",
            "<= 1.03",
            us["logged"] / us["plain"] <= 1.03,
            note=f"+{extra:.0f} us per logged step",
        ),
        Row(
            "logging",
            "log every step with TensorBoard vs no log",
            us["tb"],
            us["plain"],
            "us",
            note=f"+{us['tb'] - us['plain']:.0f} us per logged step",
        ),
        Row(
            "logging",
            "default interval (1 step in 50) vs no log",
            us["plain"] + extra / 50,
            us["plain"],
            "us",
            "not measurable (<= 1.01)",
            default <= 1.01,
            note="computed from the row above",
        ),
    ]


def overhead(settings: Settings, config: Path, data: Path, epochs: int, device: str) -> list[Row]:
    """Benchmark 1 and its budget: whole process within 5%, steady-state step within 3%."""
    rows = compare_training(
        settings,
        "overhead-bound MLP",
        "mlp",
        config,
        data,
        epochs,
        250,
        settings.pick(5, 2),
        device,
    )
    steady = inprocess_steady(
        settings, "overhead-bound MLP", "mlp", config, data, 250, settings.pick(10, 4), device
    )
    rows.insert(3, steady)
    for row, limit in ((rows[0], 1.05), (rows[1], 1.05), (rows[2], 1.03), (rows[3], 1.03)):
        row.budget, row.ok = f"<= {limit:.2f}", row.ratio is not None and row.ratio <= limit
    return rows


# --------------------------------------------------------------------------- 3: data path


def data_path(settings: Settings) -> list[Row]:
    """Serving in-memory batches: bptrain's TensorBatches vs DataLoader(TensorDataset)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from bptrain.data.loaders import DataLoaderBatches, TensorBatches

    x, y = torch.randn(16_000, 40), torch.randint(0, 10, (16_000,))
    common = dict(
        batch_size=64, shuffle=True, drop_last=False, seed=0, rank=0, world_size=1, even_shards=True
    )
    loaders = {
        "tensor": TensorBatches(x, y, **common),
        "dataloader": DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True),
        "bptrain_dataloader": DataLoaderBatches(
            TensorDataset(x, y), num_workers=0, pin_memory=False, **common
        ),
    }

    def timer(loader: Any) -> Callable[[int], float]:
        def run(rep: int) -> float:
            start, batches = time.perf_counter(), 0
            for _ in loader:
                batches += 1
            return (time.perf_counter() - start) / batches * 1e6

        return run

    runs = alternate(settings.pick(7, 3), {k: timer(v) for k, v in loaders.items()})
    tensor, dl, bdl = (median(runs[k]) for k in ("tensor", "dataloader", "bptrain_dataloader"))
    return [
        Row(
            "data", "TensorBatches vs DataLoader(TensorDataset), per batch of 64", tensor, dl, "us"
        ),
        Row(
            "data",
            "data.loader=dataloader (num_workers=0) vs DataLoader",
            bdl,
            dl,
            "us",
            note="same DataLoader plus the seeded per-epoch order",
        ),
    ]


# --------------------------------------------------------------------------- 4: logging cost


def logging_cost(settings: Settings, data: Path) -> list[Row]:
    """Steady-state step time of in-process fits that differ only in what they log.

    Every variant trains 2 epochs and the second is timed; each repetition runs all variants
    back to back and the ratios compare variants of the same repetition.
    """
    import contextlib

    from rich.console import Console

    from bptrain.config import load_config
    from bptrain.train import fit

    config = mlp_config(settings.work, data, 2, name="logging")
    never = "logging.log_every_n_steps=1000000000"
    off = "logging.tensorboard=false"
    variants = {
        "never": [never, off],
        "default": [off],
        "every": ["logging.log_every_n_steps=1", off],
        "every_no_layers": ["logging.log_every_n_steps=1", "logging.grad_norms=false", off],
        "tb_on": ["logging.tensorboard=true"],
        "tb_every": ["logging.log_every_n_steps=1", "logging.tensorboard=true"],
    }

    def runner(overrides: list[str]) -> Callable[[int], float]:
        def run(rep: int) -> float:
            cfg = load_config(config, [*overrides, "trainer.device=cpu", "logging.progress='off'"])
            with contextlib.redirect_stdout(io.StringIO()):
                summary = fit(cfg, Console(file=io.StringIO()))
            first, second = (
                r["time"] for r in epoch_records(Path(summary["run_dir"]) / "metrics.jsonl")
            )
            return (second - first) / 250 * 1000

        return run

    runs = alternate(settings.pick(8, 3), {k: runner(v) for k, v in variants.items()})

    def row(name: str, key: str, base: str, limit: float | None = None, budget: str = "") -> Row:
        ratio = paired(runs[key], runs[base])
        ok = None if limit is None else ratio <= limit
        budget = budget or ("" if limit is None else f"<= {limit:.2f}")
        return Row(
            "logging",
            name,
            median(runs[key]),
            median(runs[base]),
            "ms",
            budget,
            ok,
            pair_ratio=ratio,
        )

    return [
        row("fit, end to end: every step vs never", "every", "never"),
        row("fit, end to end: every step, logging.grad_norms=false", "every_no_layers", "never"),
        row("fit, end to end: default interval (50) vs never", "default", "never"),
        row("fit, end to end: TensorBoard on vs off (default interval)", "tb_on", "default"),
        row("fit, end to end: TensorBoard on, every step vs never", "tb_every", "never"),
    ]


# --------------------------------------------------------------------------- 5: start-up


def startup(settings: Settings, config: Path) -> list[Row]:
    bptrain = bptrain_command()
    commands = {
        "python": [sys.executable, "-c", "pass"],
        "torch": [sys.executable, "-c", "import torch"],
        "help": [*bptrain, "--help"],
        "fit_help": [*bptrain, "fit", "--help"],
        "validate": [*bptrain, "config", "validate", str(config)],
    }
    runs = alternate(
        settings.pick(10, 3),
        {k: (lambda rep, c=c: run_process(c, settings)["wall"]) for k, c in commands.items()},
    )
    s = {k: median(v) for k, v in runs.items()}
    return [
        Row(
            "start-up",
            "bptrain --help",
            s["help"],
            budget="< 0.3 s",
            ok=s["help"] < 0.3,
            unit="s",
            note=f"python -c pass: {s['python']:.3f} s",
        ),
        Row("start-up", "bptrain fit --help", s["fit_help"], unit="s"),
        Row(
            "start-up",
            "bptrain config validate",
            s["validate"],
            unit="s",
            note="imports pydantic and yaml, never torch",
        ),
        Row("start-up", "python -c 'import torch' (for scale)", s["torch"], unit="s"),
    ]


# --------------------------------------------------------------------------- 6: checkpoint and eval


def checkpoint_and_eval(settings: Settings, config: Path) -> list[Row]:
    import torch

    from bptrain.checkpoint import save_checkpoint
    from bptrain.config import load_config
    from bptrain.data import build_data
    from bptrain.evaluate import evaluate
    from bptrain.losses import build_objective
    from bptrain.models import build_model
    from bptrain.runtime import Precision

    run = newest_run(settings.work, "mlp")
    saved = run / "checkpoints" / "last.pt"
    hw_saved = settings.work / "hw-mlp" / "last.pt"
    # Our own file, just written: weights_only=False also reads checkpoints from bptrain versions whose
    # `versions.torch` was a TorchVersion object, which weights_only loading refuses.
    state = torch.load(saved, weights_only=False)
    hw_state = {"model": state["model"], "optimizer": state["optimizer"], "epoch": 1}
    target = settings.work / "ckpt"
    target.mkdir(exist_ok=True)

    def save_bptrain(rep: int) -> float:
        start = time.perf_counter()
        save_checkpoint(state, target / "last.pt")
        return (time.perf_counter() - start) * 1000

    def save_plain(rep: int) -> float:
        start = time.perf_counter()
        torch.save(hw_state, target / "plain.pt")
        return (time.perf_counter() - start) * 1000

    saves = alternate(settings.pick(9, 5), {"bptrain": save_bptrain, "plain": save_plain})

    cfg = load_config(config, ["trainer.device=cpu"])
    device = torch.device("cpu")
    data = build_data(cfg.data, seed=cfg.seed, device=device)
    objective = build_objective(cfg.loss, data.spec)
    model = build_model(cfg.model, data.spec, objective.name)
    precision = Precision.create("32", device)
    x_val, y_val = data.val.x, data.val.y  # type: ignore[union-attr]
    passes = settings.pick(20, 8)

    def eval_bptrain(rep: int) -> float:
        start = time.perf_counter()
        for _ in range(passes):
            evaluate(model, data.val, objective, precision, "val")  # type: ignore[arg-type]
        return passes * len(x_val) / (time.perf_counter() - start)

    @torch.inference_mode()
    def eval_plain(rep: int) -> float:
        start = time.perf_counter()
        for _ in range(passes):
            model.eval()
            loss, correct = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
            for i in range(0, len(x_val), 64):
                xb, yb = x_val[i : i + 64], y_val[i : i + 64]
                out = model(xb)
                loss += torch.nn.functional.cross_entropy(out, yb).double() * len(xb)
                correct += (out.argmax(-1) == yb).sum()
            [loss.item(), correct.item()]
            model.train()
        return passes * len(x_val) / (time.perf_counter() - start)

    evals = alternate(settings.pick(7, 3), {"bptrain": eval_bptrain, "plain": eval_plain})
    return [
        Row(
            "checkpoint",
            "save last.pt (bptrain: atomic + fsync) vs torch.save",
            median(saves["bptrain"]),
            median(saves["plain"]),
            "ms",
            note="same model + optimizer state; bptrain adds RNG, config, progress",
        ),
        Row(
            "checkpoint",
            "size of last.pt (MLP, 78k params)",
            saved.stat().st_size / 1024,
            hw_saved.stat().st_size / 1024,
            "KiB",
        ),
        Row(
            "eval",
            "validation throughput (evaluate vs inference loop)",
            median(evals["bptrain"]),
            median(evals["plain"]),
            "samples/s",
            note="higher is better",
        ),
    ]


# --------------------------------------------------------------------------- 7: GPU


def gpu_rows(settings: Settings, cnn: Path, data: Path, device: str = "cuda") -> list[Row]:
    """The CNN under each precision, the fused optimizer, torch.compile and channels_last (CUDA only).

    ``device="cpu"`` (``--gpu-on-cpu``) runs the same code on the CPU to check it, without
    torch.compile; its numbers mean nothing.
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return [
            Row(
                "gpu",
                "fp32/bf16/fp16, fused AdamW, trainer.compile, channels_last, host syncs",
                None,
                note=f"skipped: no CUDA device here (torch {torch.__version__}); run on a GPU machine",
            )
        ]
    from rich.console import Console

    from bptrain.config import load_config
    from bptrain.train import fit

    variants = {
        "fp32": [],
        "bf16": ["trainer.precision=bf16"],
        "fp16": ["trainer.precision=fp16"],
        "fused AdamW": ["optimizer.fused=true"],
        "bf16 + fused AdamW": ["trainer.precision=bf16", "optimizer.fused=true"],
    }
    if device == "cuda":
        variants["trainer.compile"] = ["trainer.compile=true"]
    common = [f"trainer.device={device}", "logging.progress='off'", "logging.tensorboard=false"]

    def runner(overrides: list[str]) -> Callable[[int], float]:
        def run(rep: int) -> float:
            cfg = load_config(cnn, [*overrides, *common, "trainer.max_epochs=4"])
            summary = fit(cfg, Console(file=io.StringIO()))
            return steady_step_ms(epoch_records(Path(summary["run_dir"]) / "metrics.jsonl"), 32)

        return run

    rows = []
    try:
        runs = alternate(settings.pick(3, 1), {k: runner(v) for k, v in variants.items()})
        for name in variants:
            ratio = paired(runs[name], runs["fp32"])
            rows.append(
                Row(
                    "gpu",
                    f"CNN step, {name} vs fp32",
                    median(runs[name]),
                    median(runs["fp32"]),
                    "ms",
                    pair_ratio=ratio,
                )
            )
    except Exception as err:  # report, never hide: the row says what failed
        rows.append(
            Row("gpu", "precision/fused/compile", None, note=f"failed: {type(err).__name__}: {err}")
        )
    for produce in (_channels_last_row, _sync_row):
        try:
            rows.append(produce(settings, cnn, data, device))
        except Exception as err:
            rows.append(
                Row("gpu", produce.__name__, None, note=f"failed: {type(err).__name__}: {err}")
            )
    return rows


def _channels_last_row(settings: Settings, cnn: Path, data: Path, device: str) -> Row:
    """bptrain has no channels_last option: measure what it would buy, on a bare bf16 loop."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from bench_models import SmallCNN

    with np.load(data) as arrays:
        x, y = (
            torch.as_tensor(arrays["x"][:64]).to(device),
            torch.as_tensor(arrays["y"][:64]).to(device),
        )

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def step_ms(channels_last: bool) -> float:
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = SmallCNN().to(device).to(memory_format=fmt)
        opt = torch.optim.AdamW(model.parameters(), fused=device == "cuda")
        xb = x.contiguous(memory_format=fmt)
        for i in range(60):
            if i == 10:
                sync()
                start = time.perf_counter()
            with torch.autocast(device, torch.bfloat16):
                loss = F.cross_entropy(model(xb), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        return (time.perf_counter() - start) / 50 * 1000

    runs = alternate(3, {"cl": lambda r: step_ms(True), "nchw": lambda r: step_ms(False)})
    return Row(
        "gpu",
        "channels_last vs NCHW (bf16, bare loop)",
        median(runs["cl"]),
        median(runs["nchw"]),
        "ms",
        pair_ratio=paired(runs["cl"], runs["nchw"]),
        note="bptrain has no channels_last option yet: this says whether it should",
    )


def _sync_row(settings: Settings, cnn: Path, data: Path, device: str) -> Row:
    """Count host-device synchronisations in fits that never log steps, 2 vs 4 epochs."""
    import warnings

    import torch
    from rich.console import Console

    from bptrain.config import load_config
    from bptrain.train import fit

    if device != "cuda":
        return Row(
            "gpu", "host syncs per epoch", None, note="needs CUDA (torch.cuda.set_sync_debug_mode)"
        )

    def syncs(epochs: int) -> int:
        overrides = [f"trainer.max_epochs={epochs}", "logging.log_every_n_steps=1000000000"]
        cfg = load_config(
            cnn,
            [
                *overrides,
                "trainer.device=cuda",
                "logging.progress='off'",
                "logging.tensorboard=false",
            ],
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fit(cfg, Console(file=io.StringIO()))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    two, four = syncs(2), syncs(4)
    return Row(
        "gpu",
        "host syncs per extra epoch of 32 steps (no step logging)",
        (four - two) / 2,
        unit="syncs",
        note=f"2 epochs: {two}, 4 epochs: {four}; per-epoch work only (epoch loss, validation, checkpoint)",
    )


# --------------------------------------------------------------------------- output


def machine() -> str:
    import torch

    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{model}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("s",):
        return f"{value:.3f} s"
    if unit == "samples/s":
        return f"{value:,.0f}/s"
    if unit == "syncs":
        return f"{value:.0f}"
    return f"{value:.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def table(rows: list[Row]) -> str:
    lines = [
        "| section | benchmark | bptrain | hand-written / baseline | ratio | budget | note |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        budget = r.budget + ("" if r.ok is None else (" ok" if r.ok else " MISSED"))
        lines.append(
            f"| {r.section} | {r.name} | {fmt(r.bptrain, r.unit)} | {fmt(r.handwritten, r.unit)} | "
            f"{ratio} | {budget} | {r.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bptrain vs a hand-written PyTorch loop.")
    parser.add_argument(
        "--quick", action="store_true", help="about a minute: fewer steps and repetitions"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads per process (default 1)"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated sections: overhead,step,cnn,data,logging,startup,checkpoint,gpu",
    )
    parser.add_argument(
        "--markdown", type=Path, help="also write the table (with the machine line) here"
    )
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument(
        "--workdir", type=Path, help="keep runs and data here (default: a temp dir)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a budget row is missed")
    parser.add_argument(
        "--gpu-on-cpu",
        action="store_true",
        help="run the GPU section's code on the CPU (a check, not a benchmark)",
    )
    args = parser.parse_args(argv)

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(SCRIPTS))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bptrain-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")])),
    }
    settings = Settings(args.quick, args.threads, work, env)
    only = set(filter(None, args.only.split(",")))
    wanted = lambda name: not only or name in only  # noqa: E731

    started = time.perf_counter()
    print(
        f"machine: {machine()}\nthreads per process: {args.threads}; work dir: {work}", flush=True
    )
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    data = make_data(work)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mlp_epochs = settings.pick(12, 4)
    mlp = mlp_config(work, data["mlp"], mlp_epochs)
    cnn = cnn_config(work, data["cnn"], settings.pick(4, 2))
    rows: list[Row] = []

    def section(name: str, produce: Callable[[], list[Row]]) -> None:
        if not wanted(name):
            return
        t = time.perf_counter()
        new = produce()
        rows.extend(new)
        print(f"\n[{name}: {time.perf_counter() - t:.0f} s]\n{table(new)}", flush=True)

    section("overhead", lambda: overhead(settings, mlp, data["mlp"], mlp_epochs, device))
    section("step", lambda: lockstep(settings, mlp))
    section(
        "cnn",
        lambda: compare_training(
            settings,
            "compute-bound CNN",
            "cnn",
            cnn,
            data["cnn"],
            settings.pick(4, 2),
            32,
            settings.pick(3, 2),
            device,
        ),
    )
    section("data", lambda: data_path(settings))
    section("logging", lambda: logging_cost(settings, data["mlp"]))
    section("startup", lambda: startup(settings, mlp))
    if wanted("checkpoint") and not (work / "hw-mlp" / "last.pt").exists():
        compare_training(settings, "-", "mlp", mlp, data["mlp"], mlp_epochs, 250, 1, device)
    section("checkpoint", lambda: checkpoint_and_eval(settings, mlp))
    gpu_device = "cpu" if args.gpu_on_cpu else "cuda"
    section("gpu", lambda: gpu_rows(settings, cnn, data["cnn"], gpu_device))

    text = table(rows)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"\n## all results ({time.perf_counter() - started:.0f} s, load average after: {load})\n\n{text}"
    )
    if args.markdown:
        args.markdown.write_text(
            f"Machine: {machine()}; {args.threads} thread(s) per process.\n\n{text}\n"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(), "rows": [r.__dict__ | {"ratio": r.ratio} for r in rows]},
                indent=2,
            )
        )
    missed = [r for r in rows if r.ok is False]
    for r in missed:
        print(
            f"budget missed: {r.section} / {r.name}: {r.ratio or r.bptrain:.3f} (budget {r.budget})"
        )
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
