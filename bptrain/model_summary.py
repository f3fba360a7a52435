"""The model summary: one row per layer (name, type, output shape, parameters, trainable), like Keras'.

Shapes come from a real forward pass (forward hooks record what each module returned), so they
are the shapes the data produces, per-step outputs and all. Parameters are counted per module
including its children; the totals count a shared parameter once.

Why our own ~80 lines rather than torchinfo: the fit header needs the rows on every run, so
the library would become a core dependency for one table; we need the rows as data (for
``--json`` and the compact header), which torchinfo keeps in semi-internal ``LayerInfo``
objects; and its forward pass moves inputs and sets modes behind our back (device, dtype of
token ids), where here the caller passes the exact batch the model trains on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

COMPACT_ROWS = 12  # the fit header shows at most this many rows


@dataclass
class LayerRow:
    name: str
    type: str
    depth: int
    output_shape: Any  # a list of ints (batch first), or a list of them for several outputs
    params: int
    trainable: int

    @property
    def trainable_text(self) -> str:
        if self.params == 0:
            return "-"
        if self.trainable == self.params:
            return "yes"
        return "no" if self.trainable == 0 else f"{self.trainable:,}"


@dataclass
class ModelSummary:
    model: str
    input_shape: list[int]
    output_shape: Any
    rows: list[LayerRow]
    total_params: int
    trainable_params: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}

    def compact(self, limit: int = COMPACT_ROWS) -> list[LayerRow]:
        """The deepest level of nesting whose rows (with their parents) still fit in `limit`."""
        depth = 1
        while any(r.depth > depth for r in self.rows) and (
            sum(r.depth <= depth + 1 for r in self.rows) <= limit
        ):
            depth += 1
        return [r for r in self.rows if r.depth <= depth]


@torch.no_grad()
def summarize(model: nn.Module, example: torch.Tensor) -> ModelSummary:
    """Run `example` (a small real batch, on the model's device) through the model in eval mode."""
    names = {m: name for name, m in model.named_modules()}
    shapes: dict[nn.Module, Any] = {}
    position: dict[nn.Module, int] = {}

    def enter(module: nn.Module, _inputs: Any) -> None:
        if module not in position:  # the first call decides the row's place: parents first
            position[module] = len(position)

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        shapes[module] = _shape(output)

    handles = [m.register_forward_pre_hook(enter) for m in names]
    handles += [m.register_forward_hook(record) for m in names]
    was_training = model.training
    model.eval()  # no batchnorm statistics updated, no dropout
    try:
        output = model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    # rows in the order the modules first ran (parents before their children), then those never called
    modules = [m for m in names if m is not model]
    modules.sort(key=lambda m: (_first_call(m, position), names[m]))
    rows = []
    for m in modules:
        params = list(m.parameters())
        rows.append(
            LayerRow(
                names[m],
                type(m).__name__,
                names[m].count(".") + 1,
                shapes.get(m, "not called"),
                sum(p.numel() for p in params),
                sum(p.numel() for p in params if p.requires_grad),
            )
        )
    unique = {id(p): p for p in model.parameters()}.values()
    return ModelSummary(
        type(model).__name__,
        list(example.shape),
        _shape(output),
        rows,
        sum(p.numel() for p in unique),
        sum(p.numel() for p in unique if p.requires_grad),
    )


def example_batch(
    spec: Any, device: torch.device, integer_inputs: bool, samples: int = 2
) -> torch.Tensor:
    """Inputs of the data's shape for the summary's forward pass (token ids when the data has them).

    Shapes do not depend on values, and building them is free, where drawing a real batch would
    start a DataLoader's workers just to print a table.
    """
    shape = (samples, *spec.input_shape)
    if integer_inputs:
        return torch.zeros(shape, dtype=torch.int64, device=device)
    return torch.zeros(shape, device=device)


def _first_call(module: nn.Module, position: dict[nn.Module, int]) -> float:
    """When the module (or, for a container, its first child) first ran."""
    if module in position:
        return position[module]
    called = [position[m] for m in module.modules() if m in position]
    return min(called) - 0.5 if called else float("inf")


def _shape(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, tuple | list):
        return [_shape(o) for o in output]
    return type(output).__name__


def shape_text(shape: Any) -> str:
    if isinstance(shape, list) and all(isinstance(s, int) for s in shape):
        return "(" + ", ".join(map(str, shape)) + ")"
    if isinstance(shape, list):
        return "[" + ", ".join(shape_text(s) for s in shape) + "]"
    return str(shape)


def render(summary: ModelSummary, compact: bool = False) -> Any:
    """A rich Table of the rows (all, or the compact selection)."""
    from rich.table import Table

    table = Table(
        title=f"{summary.model}: input {shape_text(summary.input_shape)} -> output {shape_text(summary.output_shape)}",
        title_justify="left",
        show_header=True,
        header_style="bold",
        show_edge=not compact,
        pad_edge=False,
    )
    for column, justify in (("layer", "left"), ("type", "left"), ("output shape", "left"),
                            ("params", "right"), ("trainable", "right")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in summary.compact() if compact else summary.rows:
        table.add_row(
            "  " * (row.depth - 1) + row.name,
            row.type,
            shape_text(row.output_shape),
            f"{row.params:,}",
            row.trainable_text,
        )
    if compact:  # the fit header's line above already counts the parameters
        return table
    frozen = summary.total_params - summary.trainable_params
    table.caption = (
        f"{summary.total_params:,} parameters, {summary.trainable_params:,} trainable"
        + (f", {frozen:,} frozen" if frozen else "")
        + f" (shapes from a forward pass of {summary.input_shape[0]} samples)"
    )
    table.caption_justify = "left"
    return table


def summarize_config(cfg: Any, samples: int = 4) -> ModelSummary:
    """Build the config's data and model as ``fit`` would (on the CPU) and summarise a real batch."""
    from bptrain.data import build_data
    from bptrain.losses import build_objective
    from bptrain.models import build_model, takes_token_ids

    data = build_data(
        cfg.data,
        seed=cfg.seed,
        device=torch.device("cpu"),
        integer_inputs=takes_token_ids(cfg.model),
    )
    objective = build_objective(cfg.loss, data.spec)
    model = build_model(cfg.model, data.spec, objective.name)
    x, _ = next(iter(data.train))
    return summarize(model, x[:samples])
