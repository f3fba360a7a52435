"""The root ``Config``: a bptrain run, made of the sections defined in the sibling modules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from bptrain.config.base import Section
from bptrain.config.data import DataConfig
from bptrain.config.model import MLPModel, ModelConfig
from bptrain.config.optim import (
    AdamOptimizer,
    LossConfig,
    NoScheduler,
    OptimizerConfig,
    SchedulerConfig,
)
from bptrain.config.trainer import LoggingConfig, TrainerConfig


class Config(Section):
    """A bptrain run: what to train, on what, how, and where to write it."""

    seed: int = 0
    """Seeds Python, NumPy and torch, the data split and the data order. Same config + seed = same metrics on CPU."""
    data: DataConfig
    """Where the samples come from; see data.source."""
    model: ModelConfig = Field(default_factory=MLPModel)
    """The network: a built-in (name) or your own nn.Module (class_path)."""
    loss: LossConfig = Field(default_factory=LossConfig)
    """The training objective."""
    optimizer: OptimizerConfig = Field(default_factory=lambda: AdamOptimizer(name="adamw"))
    """The optimizer and its hyper-parameters."""
    scheduler: SchedulerConfig = Field(default_factory=lambda: NoScheduler(name="none"))
    """The learning-rate schedule."""
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    """How long and how to train."""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Where and what to log."""

    @model_validator(mode="after")
    def _compatible_choices(self) -> Config:
        if self.optimizer.name == "lbfgs" and self.trainer.precision == "fp16":
            raise ValueError(
                "optimizer lbfgs cannot run with precision fp16 (GradScaler does not support closures); use precision 32 or bf16"
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
