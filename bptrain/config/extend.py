"""The user's own code in a config: ``class_path`` variants of loss, optimizer, scheduler and data,
and the ``metrics`` and ``callbacks`` sections (docs/extending.md).

A mapping with ``class_path`` selects the user's variant of a section; anything else the
built-in one, so ``optimizer: {name: adamw}`` and ``optimizer: {class_path: torch.optim.NAdam}``
both validate, each against its own keys. Nothing is imported here (the config package
never imports torch): ``bptrain.class_path`` resolves the names when the run is built.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from bptrain.config.base import Section
from bptrain.config.data import DataConfig
from bptrain.config.optim import LossConfig, OptimizerCommon, OptimizerConfig, SchedulerConfig

CLASS_PATH = r"^[A-Za-z_][\w.]*[.:][A-Za-z_]\w*$"
BUILTIN = "built-in"  # the union tag of the built-in variants (never a config key)


def _builtin_or_custom(value: Any) -> str:
    if isinstance(value, dict):
        return "custom" if "class_path" in value else BUILTIN
    return "custom" if hasattr(value, "class_path") else BUILTIN


def builtin_or_custom(builtin: Any, custom: type[Section]) -> Any:
    """A section that is the built-in union ``builtin``, or ``custom`` when it has class_path."""
    return Annotated[
        Annotated[builtin, Tag(BUILTIN)] | Annotated[custom, Tag("custom")],
        Discriminator(_builtin_or_custom),
    ]


class CustomLoss(Section):
    class_path: str = Field(pattern=CLASS_PATH)
    """Your loss: an nn.Module class (built with init_args, called as loss(output, target)) or a function (called as fn(output, target, **init_args)), e.g. torch.nn.SmoothL1Loss. It gets logits (N, C) and class indices, or (N, D) predictions and targets."""
    init_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the class or function."""


class CustomOptimizer(OptimizerCommon):
    class_path: str = Field(pattern=CLASS_PATH)
    """Any torch.optim.Optimizer subclass, e.g. torch.optim.NAdam; built as Class(param_groups, lr=lr, **init_args) with bptrain's parameter groups (no weight decay on 1-d parameters unless decay_bias_and_norm)."""
    init_args: dict[str, Any] = Field(default_factory=dict)
    """Its other keyword arguments (not lr: that is optimizer.lr)."""


class CustomScheduler(Section):
    class_path: str = Field(pattern=CLASS_PATH)
    """An LR scheduler class (torch.optim.lr_scheduler.LRScheduler or ReduceLROnPlateau subclass), built as Class(optimizer, **init_args)."""
    init_args: dict[str, Any] = Field(default_factory=dict)
    """Its other keyword arguments."""
    interval: Literal["step", "epoch"] = "epoch"
    """When the loop calls scheduler.step(): after every optimizer step, or after every epoch."""
    monitor: str | None = None
    """For plateau-style schedulers: step after each validation with this metric's value (e.g. val/loss), instead of every `interval`."""


class CustomData(Section):
    class_path: str = Field(pattern=CLASS_PATH)
    """A factory or Dataset class returning your datasets: one Dataset (training only), (train, val[, test]), or {"train": ..., "val": ..., "test": ...}. Samples are (x, y) tuples or dicts of tensors (then the model's training_step reads them)."""
    init_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the factory."""
    batch_size: int = Field(64, ge=1)
    """Samples per batch. Under DDP this is per process (the global batch is batch_size x world size)."""
    shuffle: bool = True
    """Reshuffle the training set every epoch (the order is a pure function of seed and epoch)."""
    drop_last: bool = False
    """Drop the last, shorter training batch of each epoch."""
    num_workers: int = Field(2, ge=0)
    """DataLoader worker processes (their random seeds are a pure function of seed and epoch)."""
    collate_fn: str | None = Field(None, pattern=CLASS_PATH)
    """A function turning a list of samples into a batch (class_path); default: torch's, which stacks tuples and dicts of tensors."""
    num_classes: int | None = Field(None, ge=1)
    """Classes in the labels, for the metrics; default: the dataset's num_classes (or len(classes)), else a scan of the training labels."""


DataSection = builtin_or_custom(DataConfig, CustomData)
LossSection = builtin_or_custom(LossConfig, CustomLoss)
OptimizerSection = builtin_or_custom(OptimizerConfig, CustomOptimizer)
SchedulerSection = builtin_or_custom(SchedulerConfig, CustomScheduler)

# --------------------------------------------------------------------------- metrics

CLASSIFICATION_METRICS = (
    "accuracy",
    "top_k_accuracy",
    "precision",
    "recall",
    "f1",
    "auroc",
    "per_class_accuracy",
    "confusion_matrix",
)
REGRESSION_METRICS = ("mae", "rmse", "r2", "mape")
METRIC_NAMES = CLASSIFICATION_METRICS + REGRESSION_METRICS


def check_metric_name(name: str) -> str:
    """A built-in metric name, or a ValueError with "Did you mean"."""
    if name in METRIC_NAMES:
        return name
    close = difflib.get_close_matches(name, METRIC_NAMES, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(
        f"unknown metric '{name}'.{hint} Built-in metrics: {', '.join(METRIC_NAMES)}; "
        "or any torchmetrics.Metric by class_path"
    )


class MetricConfig(Section):
    name: str
    """accuracy, top_k_accuracy, precision, recall, f1, auroc, per_class_accuracy, confusion_matrix (classification); mae, rmse, r2, mape (regression)."""
    average: Literal["macro", "micro", "weighted"] = "macro"
    """precision/recall/f1/auroc: how per-class values combine (auroc: macro or weighted). Other than macro, the key gets a suffix: val/f1_micro."""
    k: int = Field(5, ge=1)
    """top_k_accuracy: a prediction counts when the label is among the k most probable classes (logged as val/top<k>_acc)."""
    num_classes: int | None = Field(None, ge=1)
    """Classes, when the data cannot tell (dict samples without data.num_classes)."""
    log_as: str | None = Field(None, pattern=r"^[A-Za-z_][\w/]*$")
    """The key after val/ and test/ (default: acc for accuracy, else the name)."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return check_metric_name(name)


class CustomMetric(Section):
    class_path: str = Field(pattern=CLASS_PATH)
    """Any torchmetrics.Metric; it gets update(preds, target) like the built-ins (docs/extending.md)."""
    init_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the class."""
    log_as: str | None = Field(None, pattern=r"^[A-Za-z_][\w/]*$")
    """The key after val/ and test/ (default: the class name in snake_case)."""


def _metric_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "custom" if "class_path" in value else "metric"
    return "custom" if hasattr(value, "class_path") else "metric"


MetricEntry = Annotated[
    Annotated[MetricConfig, Tag("metric")] | Annotated[CustomMetric, Tag("custom")],
    Discriminator(_metric_kind),
]


def metric_list(value: Any) -> Any:
    """A bare name in the metrics list is short for {name: ...}."""
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


# --------------------------------------------------------------------------- callbacks


class CallbackConfig(Section):
    class_path: str = Field(pattern=CLASS_PATH)
    """A callback class (or factory): an object with some of on_fit_start(run), on_train_batch_end(step, logs), on_validation_end(metrics), on_checkpoint(path), on_fit_end(summary), and optionally state_dict/load_state_dict."""
    init_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the class."""
