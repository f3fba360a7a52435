"""The root ``Config``: a bptrain run, made of the sections defined in the sibling modules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from bptrain.config.base import Section
from bptrain.config.extend import (
    CallbackConfig,
    DataSection,
    LossSection,
    MetricEntry,
    OptimizerSection,
    SchedulerSection,
    metric_list,
)
from bptrain.config.model import MLPModel, ModelConfig, TransferLearning
from bptrain.config.optim import (
    AdamOptimizer,
    LossConfig,
    NoScheduler,
)
from bptrain.config.trainer import LoggingConfig, TrainerConfig


class Config(Section):
    """A bptrain run: what to train, on what, how, and where to write it."""

    seed: int = 0
    """Seeds Python, NumPy and torch, the data split and the data order. Same config + seed = same metrics on CPU."""
    data: DataSection
    """Where the samples come from: a built-in data.source, or your own Datasets (data.class_path)."""
    model: ModelConfig = Field(default_factory=MLPModel)
    """The network: a built-in (name) or your own nn.Module (class_path)."""
    loss: LossSection = Field(default_factory=LossConfig)
    """The training objective: a built-in loss.name, or your own (loss.class_path)."""
    optimizer: OptimizerSection = Field(default_factory=lambda: AdamOptimizer(name="adamw"))
    """The optimizer and its hyper-parameters: a built-in optimizer.name, or any torch.optim.Optimizer (optimizer.class_path)."""
    scheduler: SchedulerSection = Field(default_factory=lambda: NoScheduler(name="none"))
    """The learning-rate schedule: a built-in scheduler.name, or your own (scheduler.class_path with interval/monitor)."""
    metrics: list[MetricEntry] | None = None
    """Evaluation metrics, logged as val/<key> and test/<key>: built-in names (accuracy, f1, ...) with options, or any torchmetrics.Metric by class_path. Default: accuracy for classification, mae for regression (none for a model with its own training_step)."""
    callbacks: list[CallbackConfig] = Field(default_factory=list)
    """Your objects called at on_fit_start, on_train_batch_end, on_validation_end, on_checkpoint and on_fit_end (docs/extending.md)."""
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    """How long and how to train."""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Where and what to log."""

    @field_validator("metrics", mode="before")
    @classmethod
    def _names_as_entries(cls, value: Any) -> Any:
        return metric_list(value)

    @model_validator(mode="after")
    def _compatible_choices(self) -> Config:
        if getattr(self.optimizer, "name", None) == "lbfgs" and self.trainer.precision == "fp16":
            raise ValueError(
                "optimizer lbfgs cannot run with precision fp16 (GradScaler does not support closures); use precision 32 or bf16"
            )
        if self.trainer.adversarial is not None and getattr(self.model, "vocab_size", None):
            raise ValueError(
                "trainer.adversarial cannot attack token ids (model.vocab_size: the model embeds "
                "integers, which have no gradient); remove trainer.adversarial, or feed real-valued inputs"
            )
        return self


def models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found.extend(models_in(arg))
    if hasattr(annotation, "__origin__") and getattr(annotation, "__metadata__", None):
        found.extend(models_in(annotation.__origin__))
    return list(dict.fromkeys(found))


VARIANT_TAGS = ("name", "source", "class_path")
"""The keys that pick a section's variant; shown first wherever keys are listed."""
SHARED_LAST = tuple(TransferLearning.model_fields)
"""Keys every model has (init_from, init_strict, freeze); shown after the model's own keys."""


def ordered_keys(keys: Iterable[str]) -> list[str]:
    """A section's keys in reading order: the variant's tag, its own keys, then the keys all models share.

    Pydantic lists inherited fields first; config.yaml, `config show` and error messages list
    the transfer-learning keys last, as bptrain 0.1 did.
    """
    keys = list(keys)
    first = [k for k in VARIANT_TAGS if k in keys]
    last = [k for k in SHARED_LAST if k in keys]
    return first + [k for k in keys if k not in first and k not in last] + last
