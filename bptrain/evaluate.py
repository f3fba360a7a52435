"""Evaluation: the loss and the ``metrics:`` over a whole split, averaged over samples (not batches)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from bptrain import distributed
from bptrain.data import Batches
from bptrain.losses import Objective
from bptrain.metrics import EvalMetrics, build_metrics, metric_inputs
from bptrain.runtime import Precision, sum_dtype
from bptrain.steps import StepModule, batch_size, has_training_step, split_output, to_device


def evaluate(
    model: nn.Module,
    batches: Batches,
    objective: Objective,
    precision: Precision,
    prefix: str,
    metrics: EvalMetrics | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Return ``{f"{prefix}/loss", f"{prefix}/<metric>"...}``; one host sync at the end.

    ``metrics`` defaults to the task's (accuracy for classification, MAE for regression).
    A model with ``training_step`` is evaluated by its ``validation_step`` (or ``training_step``):
    the loss and every other value it returns are averaged over samples, and its
    ``preds``/``target`` (when returned) feed the metrics.

    Under DDP every rank must call it: each evaluates its disjoint shard, the loss sums are
    all-reduced and torchmetrics syncs its states, so the metrics are exactly those of one
    process evaluating the whole split (up to float rounding of the loss).
    `on_batch(done, total)` (console progress) runs on the host after each batch; it reads no tensor.
    """
    with _without_autograd(model):
        distributed.sync_buffers(model)
        if metrics is None:
            metrics = build_metrics(None, objective.task, objective.num_classes)
        metrics.to(precision.device).reset()
        was_training = model.training
        model.eval()
        try:
            sums, samples = _accumulate(model, batches, objective, precision, metrics, on_batch)
        finally:
            model.train(was_training)
        names = list(sums)
        device = precision.device
        dtype = sum_dtype(device)
        local = torch.stack(
            [*(sums[k].to(dtype) for k in names), torch.tensor(samples, dtype=dtype, device=device)]
        )
        totals = distributed.all_reduce_sum(local).tolist()
        count = max(totals[-1], 1)
        result = {
            f"{prefix}/{name}": total / count for name, total in zip(names, totals, strict=False)
        }
        result.update(metrics.compute(prefix))
        return result


def _without_autograd(model: nn.Module) -> AbstractContextManager[object]:
    """``inference_mode``, except for an FSDP model: there the first evaluation of a process
    (a resume that starts with validation) would all-gather the parameters into inference
    tensors, which FSDP keeps and the next training step can no longer write into. Any module
    counts, not only the root: a wrapper (a model's own ``training_step`` runs through
    ``steps.StepModule``) may hold the FSDP root inside it. Only looked for when FSDP is loaded."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None and any(isinstance(m, fsdp.FSDPModule) for m in model.modules()):
        return torch.no_grad()
    return torch.inference_mode()


def _accumulate(
    model: nn.Module,
    batches: Batches,
    objective: Objective,
    precision: Precision,
    metrics: EvalMetrics,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Sums of (value x batch size) per logged name, and the number of samples; metrics updated."""
    device = precision.device
    user_step = StepModule(model) if has_training_step(model) else None
    scores = metrics.argmax_only  # accuracy alone: the argmax of the logits, no softmax
    sums: dict[str, torch.Tensor] = {}
    samples, total, dtype = 0, len(batches), sum_dtype(device)
    for index, batch in enumerate(batches):
        batch = to_device(batch, device)
        n = batch_size(batch)
        with precision.autocast():
            if user_step is not None:
                output = user_step(batch, "val")
            else:
                x, y = batch
                output = model(x)
        if user_step is not None:
            loss, logged = split_output(output, "validation_step")
            values = {"loss": loss, **logged}
            if isinstance(output, dict) and "preds" in output and "target" in output:
                metrics.update(output["preds"].float(), output["target"])
        else:
            output = output.float()
            values = {"loss": objective.loss(output, y)}
            metrics.update(
                *metric_inputs(
                    output, y, objective.task, objective.binary, objective.log_probs, scores
                )
            )
        for name, value in values.items():  # value x n, summed in float64: exact products
            if name not in sums:
                sums[name] = torch.zeros((), dtype=dtype, device=device)
            sums[name].add_(value.detach(), alpha=n)
        samples += n
        if on_batch is not None:
            on_batch(index + 1, total)
    if not sums:  # an empty shard (more ranks than batches): still join the all-reduce
        sums["loss"] = torch.zeros((), device=device, dtype=sum_dtype(device))
    return sums, samples
