"""Evaluation: loss and accuracy over a whole split, averaged over samples (not batches)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bptrain import distributed
from bptrain.data import Batches
from bptrain.losses import Objective
from bptrain.runtime import Precision, sum_dtype


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Batches,
    objective: Objective,
    precision: Precision,
    prefix: str,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Return {f"{prefix}/loss", f"{prefix}/acc" (classification)}; one host sync at the end.

    Under DDP every rank must call it: each evaluates its disjoint shard, and the sums of
    loss x samples, correct, samples and targets are all-reduced, so the metrics are exactly those
    of one process evaluating the whole split (up to float rounding of the loss).
    `on_batch(done, total)` (console progress) runs on the host after each batch; it reads no tensor.
    """
    distributed.sync_buffers(model)
    was_training = model.training
    model.eval()
    device = precision.device
    loss_sum = torch.zeros((), device=device, dtype=sum_dtype(device))
    correct = torch.zeros((), device=device, dtype=torch.int64)
    samples = targets = 0  # targets > samples with per-step labels: accuracy is per label
    total = len(batches)
    for index, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast():
            output = model(x)
        output = output.float()
        loss_sum += objective.loss(output, y).to(loss_sum.dtype) * len(x)
        hits = objective.correct(output, y)
        if hits is not None:
            correct += hits
        samples += len(x)
        targets += y.numel() if objective.task == "classification" else len(x)
        if on_batch is not None:
            on_batch(index + 1, total)
    model.train(was_training)
    counts = torch.tensor([samples, targets], device=device, dtype=loss_sum.dtype)
    totals = distributed.all_reduce_sum(
        torch.cat([torch.stack([loss_sum, correct.to(loss_sum.dtype)]), counts])
    )
    loss_total, correct_total, samples, targets = totals.tolist()
    metrics = {f"{prefix}/loss": loss_total / max(samples, 1)}
    if objective.task == "classification":
        metrics[f"{prefix}/acc"] = correct_total / max(targets, 1)
    return metrics
