"""What the console shows before and after training: the run header and the final summary table."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def print_run_header(
    console: Console,
    run_dir: Path,
    model: nn.Module,
    data: Any,
    device: Any,
    cfg: Any,
    total_steps: int,
    resumed_from: Path | None,
) -> None:
    total, trainable = count_parameters(model)
    spec = data.spec
    task = (
        f"{spec.num_classes}-class classification"
        if spec.task == "classification"
        else f"regression to {spec.target_shape}"
        if spec.task == "regression"
        else "samples read by the model's training_step"
    )
    sizes = f"train {data.train.num_samples}" + "".join(
        f", {name} {split.num_samples}"
        for name, split in (("val", data.val), ("test", data.test))
        if split is not None
    )
    console.print(
        f"[bold]run directory[/bold] {run_dir}"
        + (f"  (resumed from {resumed_from})" if resumed_from else "")
    )
    source = getattr(cfg.data, "source", None) or cfg.data.class_path
    parts = [
        f"data {source}: {task}, input {spec.input_shape or 'dicts'}, {sizes}",
        f"model {type(model).__name__}: {trainable:,} trainable / {total:,} parameters"
        + (f" ({total - trainable:,} frozen)" if total > trainable else ""),
        f"device {device}, precision {cfg.trainer.precision}",
        f"{total_steps} optimizer steps",
    ]
    console.print(join_to_width(parts, console.width), soft_wrap=True, markup=False)


def join_to_width(parts: list[str], width: int, separator: str = " | ") -> str:
    """Join `parts` with `separator`, starting a new line where the next part would pass `width`."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(separator) + len(part) <= width:
            lines[-1] += separator + part
        else:  # a part wider than the terminal wraps at its spaces
            lines.extend(textwrap.wrap(part, width, subsequent_indent="  ", break_long_words=False))
    return "\n".join(lines)


def print_summary(console: Console, summary: dict[str, Any], written: bool = True) -> None:
    """The final/best table; ``written=False``: summary.json was kept as it was (a finished run)."""
    table = Table(title="bptrain summary", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("final", justify="right")
    table.add_column("best", justify="right")
    final, best = summary.get("final") or {}, summary.get("best") or {}
    for key in sorted(k for k in final if "/" in k):
        table.add_row(key, _fmt(final.get(key)), _fmt(best.get(key)))
    for key, value in (summary.get("test") or {}).items():
        table.add_row(key, _fmt(value), "")
    table.add_row(
        "epochs / steps",
        f"{summary['epochs']} / {summary['steps']}",
        f"epoch {best['epoch']}" if best else "",
    )
    table.add_row("wall time", f"{summary['wall_time_s']:.1f} s", "")
    console.print(table)
    done = "wrote" if written else "kept"
    console.print(f"{done} {summary.get('run_dir')}/summary.json", soft_wrap=True)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def bytes_per_rank(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """What this rank holds of the parameters, their gradients (one per trainable parameter) and
    the optimizer state, in bytes: the local shard under FSDP, everything under DDP."""

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    params = grads = 0
    for p in model.parameters():
        size = local(p).numel() * p.element_size()
        params += size
        grads += size if p.requires_grad else 0
    state = sum(
        local(v).numel() * v.element_size()
        for per_param in optimizer.state.values()
        for v in per_param.values()
        if isinstance(v, torch.Tensor)
    )
    return {"params": params, "grads": grads, "optimizer": state, "total": params + grads + state}
