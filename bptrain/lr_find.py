"""``bptrain lr-find``: the learning-rate range test (Smith, 2017; the fastai "LR finder").

Train for a few hundred steps while the LR grows exponentially from ``start_lr`` to
``end_lr``; record the loss after each step, smooth it (a bias-corrected exponential moving
average), and stop once it diverges (smoothed loss above ``diverge`` x its minimum, or not
finite). The loss falls fastest a little below the LR where it bottoms out, so the suggestion is
the LR at the minimum of the smoothed loss divided by 10; the LR of the steepest descent is
reported as well. The model and optimizer are built exactly as ``fit`` builds them (same data,
grad clipping, precision), and the model's weights are restored afterwards.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bptrain.components import build_components
from bptrain.config import Config
from bptrain.errors import UserError
from bptrain.optim import build_optimizer
from bptrain.runlog import create_run_dir, dumps
from bptrain.runtime import Precision, resolve_device, seed_everything
from bptrain.train import train_step


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = "reached end_lr"
    suggested_lr: float | None = None
    steepest_lr: float | None = None
    min_loss_lr: float | None = None
    lr_is_cause: bool = True  # False when the loss was NaN/Inf because of the data or the model


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """Exponentially spaced LRs: equal steps on a log scale from start_lr to end_lr."""
    if steps < 2:
        return [start_lr]
    ratio = end_lr / start_lr
    return [start_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


def range_test(
    cfg: Config,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 200,
    smoothing: float = 0.9,
    diverge: float = 4.0,
) -> RangeTest:
    """Run the range test on cfg's training data; the model it trains is discarded (restored)."""
    if not 0 < start_lr < end_lr:
        raise UserError(f"lr-find needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}.")
    if not 0 <= smoothing < 1:
        raise UserError(f"lr-find --smoothing must be in [0, 1), got {smoothing}.")
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    parts = build_components(cfg, device)
    data, model = parts.data, parts.model
    optimizer = build_optimizer(cfg.optimizer, model)
    precision = Precision.create(cfg.trainer.precision, device)
    lrs = lr_schedule(start_lr, end_lr, steps)
    return sweep_lrs(  # parts.step: the built-in loss, or the model's own training_step
        model, data.train, parts.step, optimizer, precision, cfg, lrs, smoothing, diverge
    )


def sweep_lrs(
    model, batches, objective, optimizer, precision, cfg, lrs, smoothing=0.9, diverge=4.0
) -> RangeTest:
    """Train one step per LR in ``lrs``, recording the loss; the model's weights are restored after."""
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        return _record(
            model, batches, objective, optimizer, precision, cfg, lrs, smoothing, diverge
        )
    finally:
        model.load_state_dict(initial)


def _record(
    model, batches, objective, optimizer, precision, cfg, lrs, smoothing, diverge
) -> RangeTest:
    result = RangeTest()
    average, best = 0.0, math.inf
    model.train()
    for step, (lr, batch) in enumerate(zip(lrs, _forever(batches), strict=False)):
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = train_step(
            model, [batch], objective, optimizer, precision, cfg.trainer.grad_clip
        ).loss
        value = float(loss)
        result.lrs.append(lr)
        result.losses.append(value)
        if not math.isfinite(value):
            result.smoothed.append(math.inf)
            result.stopped, result.lr_is_cause = _non_finite_cause(value, lr, step, batch)
            break
        average = smoothing * average + (1 - smoothing) * value
        smooth = average / (1 - smoothing ** (step + 1))  # bias correction for the first steps
        result.smoothed.append(smooth)
        best = min(best, smooth)
        if step > 10 and smooth > diverge * best:
            result.stopped = f"diverged at lr {lr:.3g} (smoothed loss {smooth:.3g} > {diverge:g} x minimum {best:.3g})"
            break
    _suggest(result)
    return result


def _non_finite_cause(value: float, lr: float, step: int, batch: Any) -> tuple[str, bool]:
    """Why the loss is not finite: NaN/Inf in the batch or at the first step is not the lr's doing."""
    tensors = batch if isinstance(batch, (tuple, list)) else [batch]
    if any(
        isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
        for t in tensors
    ):
        return (
            f"loss became {value} at step {step + 1} because that batch holds NaN/Inf values: the "
            "data, not the learning rate, is the cause (clean it; clean it)"
        ), False
    if step == 0:
        return (
            f"loss is {value} at the first step (lr {lr:.3g}), before the learning rate could act: "
            "the model or the data produce it (run bptrain grad-inspect to find where)"
        ), False
    return f"loss became {value} at lr {lr:.3g}", True


def _forever(batches):
    """Training batches epoch after epoch, in the same seeded order fit uses."""
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        yield from batches
        epoch += 1


def _suggest(result: RangeTest) -> None:
    finite = [
        (lr, s) for lr, s in zip(result.lrs, result.smoothed, strict=True) if math.isfinite(s)
    ]
    if len(finite) < 3:
        return
    lrs = [lr for lr, _ in finite]
    smooth = [s for _, s in finite]
    lowest = min(range(len(smooth)), key=smooth.__getitem__)
    result.min_loss_lr = lrs[lowest]
    result.suggested_lr = lrs[lowest] / 10
    # Steepest descent of the smoothed loss per unit of log(lr), before the minimum.
    slopes = [
        (smooth[i + 1] - smooth[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        for i in range(max(lowest, 1))
        if i + 1 < len(lrs)
    ]
    if slopes:
        result.steepest_lr = lrs[min(range(len(slopes)), key=slopes.__getitem__)]


def ascii_plot(lrs: list[float], values: list[float], width: int = 64, height: int = 16) -> str:
    """Smoothed loss against log10(lr) as text, for terminals and logs."""
    points = [(math.log10(lr), v) for lr, v in zip(lrs, values, strict=True) if math.isfinite(v)]
    if len(points) < 2:
        return "(not enough finite points to plot)"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    y1 = min(
        y1, y0 + 4 * (ys[0] - y0) if ys[0] > y0 else y1
    )  # keep the divergence from flattening the valley
    y1 = y1 if y1 > y0 else y0 + 1.0
    grid = [[" "] * width for _ in range(height)]
    for x, y in points:
        col = round((x - x0) / (x1 - x0 or 1) * (width - 1))
        row = round((min(y, y1) - y0) / (y1 - y0) * (height - 1))
        grid[height - 1 - row][col] = "*"
    lines = [f"{y1:9.3g} |" + "".join(grid[0])]
    lines += ["          |" + "".join(r) for r in grid[1:-1]]
    lines.append(f"{y0:9.3g} |" + "".join(grid[-1]))
    lines.append("          +" + "-" * width)
    left, right = f"lr {10**x0:.0e}", f"{10**x1:.0e}"
    lines.append("           " + left + " " * max(width - len(left) - len(right), 1) + right)
    return "\n".join(lines)


def write_curve(result: RangeTest, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {k: v for k, v in asdict(result).items()}
    payload["losses"] = [v if math.isfinite(v) else None for v in result.losses]
    payload["smoothed"] = [v if math.isfinite(v) else None for v in result.smoothed]
    (out_dir / "lr_find.json").write_text(dumps(payload, indent=2) + "\n", encoding="utf-8")
    with (out_dir / "lr_find.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, (lr, loss, smooth) in enumerate(
            zip(result.lrs, result.losses, result.smoothed, strict=True)
        ):
            writer.writerow([i, f"{lr:.6g}", f"{loss:.6g}", f"{smooth:.6g}"])


def write_png(result: RangeTest, path: Path) -> None:
    from bptrain.diagnostics.plot import require_matplotlib, save_figure

    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed loss")
    if result.suggested_lr:
        ax.axvline(
            result.suggested_lr,
            color="red",
            linestyle="--",
            label=f"suggested {result.suggested_lr:.2g}",
        )
    ax.set_xscale("log")
    finite = [s for s in result.smoothed if math.isfinite(s)]
    if finite:
        ax.set_ylim(min(finite) * 0.95, min(max(finite), 4 * min(finite) + finite[0]) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend()
    save_figure(fig, path)


def run_lr_find(
    cfg: Config,
    console: Console,
    start_lr: float,
    end_lr: float,
    steps: int,
    smoothing: float,
    diverge: float,
    out: Path | None,
    plot: Path | None,
) -> dict[str, Any]:
    """The command: run the test, print the curve and the suggestion, write the files."""
    if plot is not None:
        from bptrain.diagnostics.plot import plot_target, require_matplotlib

        require_matplotlib()  # before the test, not after it
        plot = plot_target(plot)
    result = range_test(cfg, start_lr, end_lr, steps, smoothing, diverge)
    out_dir = out or create_run_dir(cfg.logging.run_dir, f"{cfg.logging.name or 'run'}-lr-find")
    write_curve(result, out_dir)
    console.print(ascii_plot(result.lrs, result.smoothed), markup=False, highlight=False)
    console.print(f"{len(result.lrs)} steps; stopped: {result.stopped}", markup=False)
    if result.suggested_lr is None and not result.lr_is_cause:
        console.print("no suggestion: the non-finite loss does not come from the learning rate.")
    elif result.suggested_lr is None:
        console.print("no suggestion: too few finite losses; lower --start-lr or raise --steps.")
    else:
        console.print(
            f"suggested lr: {result.suggested_lr:.3g} (minimum of the smoothed loss at "
            f"{result.min_loss_lr:.3g}, divided by 10; steepest descent at {result.steepest_lr or math.nan:.3g}). "
            f"Try: bptrain fit ... optimizer.lr={result.suggested_lr:.2g}",
            markup=False,
        )
    if plot is not None:
        write_png(result, plot)
        console.print(f"wrote {plot}")
    console.print(f"wrote {out_dir}/lr_find.json and lr_find.csv")
    return {**asdict(result), "out_dir": str(out_dir)}
