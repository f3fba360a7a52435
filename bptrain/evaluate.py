"""Evaluation: loss and accuracy over a whole split, averaged over samples (not batches)."""

from __future__ import annotations

import torch
from torch import nn

from bptrain import distributed
from bptrain.data import Batches
from bptrain.losses import Objective
from bptrain.runtime import Precision


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Batches, objective: Objective, precision: Precision, prefix: str
) -> dict[str, float]:
    """Return {f"{prefix}/loss", f"{prefix}/acc" (classification)}; one host sync at the end.

    Under DDP every rank must call it: each evaluates its disjoint shard, and the sums of
    loss x samples, correct and samples are all-reduced, so the metrics are exactly those of
    one process evaluating the whole split (up to float rounding of the loss).
    """
    distributed.sync_buffers(model)
    was_training = model.training
    model.eval()
    device = precision.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    samples = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast():
            output = model(x)
        output = output.float()
        loss_sum += objective.loss(output, y).double() * len(x)
        hits = objective.correct(output, y)
        if hits is not None:
            correct += hits
        samples += len(x)
    model.train(was_training)
    count = torch.tensor(samples, device=device, dtype=torch.float64)
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double(), count])).tolist()
    metrics = {f"{prefix}/loss": totals[0] / max(totals[2], 1)}
    if objective.task == "classification":
        metrics[f"{prefix}/acc"] = totals[1] / max(totals[2], 1)
    return metrics
