"""The training objective: a loss and, for classification, the count of correct predictions.

``Objective`` is the one place that knows how model outputs line up with
targets (class logits, a single binary logit, flattened regression targets), so
the training loop and evaluation never special-case a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bptrain.config import LossConfig
from bptrain.data import DataSpec
from bptrain.errors import ConfigError

CLASSIFICATION_LOSSES = {"cross_entropy", "nll", "bce_with_logits"}
REGRESSION_LOSSES = {"mse", "l1", "huber", "bce_with_logits"}


def resolve_loss_name(cfg: LossConfig, spec: DataSpec) -> str:
    """`auto` becomes cross_entropy for class labels and mse for real targets; mismatches are config errors."""
    name = cfg.name
    if name == "auto":
        return "cross_entropy" if spec.task == "classification" else "mse"
    if spec.task == "classification" and name not in CLASSIFICATION_LOSSES:
        raise ConfigError(
            f"loss.name {name} needs real-valued targets, but the data has integer class labels "
            f"({spec.num_classes} classes). Use cross_entropy (or nll / bce_with_logits), or store the targets as floats."
        )
    if spec.task == "regression" and name not in REGRESSION_LOSSES:
        raise ConfigError(
            f"loss.name {name} needs integer class labels, but the data has real-valued targets. "
            "Use mse, l1 or huber, or store the targets as integers 0..C-1."
        )
    if name == "bce_with_logits" and spec.task == "classification" and spec.num_classes != 2:
        raise ConfigError(
            f"loss.name bce_with_logits with class labels needs exactly 2 classes, found {spec.num_classes}; use cross_entropy."
        )
    return name


@dataclass
class Objective:
    name: str
    loss_fn: nn.Module
    task: str
    binary: bool  # one logit per sample against 0/1 labels

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output, target = self._align(output, target)
        return self.loss_fn(output, target)

    def correct(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Number of correct predictions in the batch as a tensor (no host sync), or None for regression."""
        if self.task != "classification":
            return None
        output, target = self._align(output, target)
        if self.binary:
            return ((output > 0).long() == target.long()).sum()
        return (output.argmax(dim=-1) == target).sum()

    def _align(
        self, output: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.binary:
            return output.reshape(-1), target.reshape(-1).to(output.dtype)
        if self.task == "regression":
            return output.reshape(len(output), -1), target.reshape(len(target), -1).to(output.dtype)
        if target.ndim > 1:  # per-step labels (N, T): every step is one classification
            return output.reshape(target.numel(), -1), target.reshape(-1)
        return output, target


def build_objective(cfg: LossConfig, spec: DataSpec) -> Objective:
    name = resolve_loss_name(cfg, spec)
    weight = torch.tensor(cfg.class_weights, dtype=torch.float32) if cfg.class_weights else None
    if weight is not None and spec.num_classes is not None and len(weight) != spec.num_classes:
        raise ConfigError(
            f"loss.class_weights has {len(weight)} values but the data has {spec.num_classes} classes."
        )
    loss_fn: nn.Module = {
        "cross_entropy": lambda: nn.CrossEntropyLoss(
            weight=weight, label_smoothing=cfg.label_smoothing
        ),
        "nll": lambda: nn.NLLLoss(weight=weight),
        "mse": nn.MSELoss,
        "l1": nn.L1Loss,
        "huber": lambda: nn.HuberLoss(delta=cfg.huber_delta),
        "bce_with_logits": nn.BCEWithLogitsLoss,
    }[name]()
    return Objective(
        name, loss_fn, spec.task, binary=name == "bce_with_logits" and spec.task == "classification"
    )
