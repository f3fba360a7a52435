"""Evaluation: loss and accuracy over a whole split, averaged over samples (not batches)."""

from __future__ import annotations

import torch
from torch import nn

from bptrain.data import Batches
from bptrain.losses import Objective
from bptrain.runtime import Precision


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Batches, objective: Objective, precision: Precision, prefix: str
) -> dict[str, float]:
    """Return {f"{prefix}/loss", f"{prefix}/acc" (classification)}; one host sync at the end."""
    was_training = model.training
    model.eval()
    device = precision.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    samples = targets = 0  # targets > samples with per-step labels: accuracy is per label
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
        targets += y.numel() if objective.task == "classification" else len(x)
    model.train(was_training)
    totals = torch.stack([loss_sum, correct.double()]).tolist()
    metrics = {f"{prefix}/loss": totals[0] / max(samples, 1)}
    if objective.task == "classification":
        metrics[f"{prefix}/acc"] = totals[1] / max(targets, 1)
    return metrics
