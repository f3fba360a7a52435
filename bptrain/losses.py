"""The training objective: a loss and, for classification, the count of correct predictions.

``Objective`` is the one place that knows how model outputs line up with
targets (class logits, a single binary logit, flattened regression targets), so
the training loop and evaluation never special-case a loss.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bptrain.class_path import instantiate, resolve, signature_of
from bptrain.config import LossConfig
from bptrain.data import DataSpec
from bptrain.errors import ConfigError, UserError

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
    num_classes: int | None = None  # for the default metrics

    @property
    def log_probs(self) -> bool:
        """Whether the model outputs log-probabilities (nll) rather than logits."""
        return self.name == "nll"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output, target = self._align(output, target)
        return self.loss_fn(output, target)

    def compute(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The built-in step for ``train_step``: ``loss(model(x), y)``, nothing else to log
        (``steps.UserStep`` is the model's own ``training_step``)."""
        x, y = batch
        return self.loss(model(x), y), {}

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
    if getattr(cfg, "class_path", None) is not None:
        return _user_objective(cfg, spec)
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
        name,
        loss_fn,
        spec.task,
        binary=name == "bce_with_logits" and spec.task == "classification",
        num_classes=spec.num_classes,
    )


def _user_objective(cfg: Any, spec: DataSpec) -> Objective:
    """``loss.class_path``: a loss class (built with ``init_args``) or a function (called with
    ``init_args`` as keyword arguments). It gets what cross_entropy would (logits ``(N, C)`` and
    class indices) or, for regression, predictions and targets shaped ``(N, D)``."""
    key = "loss.class_path"
    target = resolve(cfg.class_path, key, what="a loss: an nn.Module class or a function")
    if isinstance(target, type):
        loss_fn = instantiate(target, key, cfg.class_path, cfg.init_args)
        if not callable(loss_fn):
            raise UserError(f"{key} '{cfg.class_path}' builds objects that are not callable.")
    else:
        try:  # a function is called at every step: check now that (output, target, **init_args) fit
            inspect.signature(target).bind(None, None, **cfg.init_args)
        except TypeError as err:
            raise UserError(
                f"loss.init_args do not fit {cfg.class_path}: {err}. It is called as "
                f"fn(output, target, **init_args); the signature is {signature_of(target)}."
            ) from None
        except ValueError:  # no signature to check against
            pass
        loss_fn = _FunctionLoss(target, cfg.init_args)
    if not isinstance(loss_fn, nn.Module):
        loss_fn = _FunctionLoss(loss_fn, {})
    task = spec.task or "regression"
    return Objective("custom", loss_fn, task, binary=False, num_classes=spec.num_classes)


class _FunctionLoss(nn.Module):
    """A loss function (or callable object) as a module, so the loop can move it to the device."""

    def __init__(self, fn: Any, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.fn, self.kwargs = fn, dict(kwargs)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(output, target, **self.kwargs)
