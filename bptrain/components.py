"""The data, objective and model a config describes, built the same way for every command.

``fit``, ``eval``, ``lr-find`` and ``grad-inspect`` must see exactly the same model and
data: one function, so they cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bptrain.adversarial import refuse_with_training_step
from bptrain.config import Config
from bptrain.data import DataBundle, build_data
from bptrain.losses import Objective, build_objective
from bptrain.metrics import EvalMetrics, build_metrics
from bptrain.models import build_model, takes_token_ids
from bptrain.preprocess import Preprocessing
from bptrain.steps import UserStep, has_training_step
from bptrain.transfer import freeze, init_from


@dataclass
class Components:
    data: DataBundle
    objective: Objective
    model: nn.Module
    metrics: EvalMetrics  # the `metrics:` section (or the task's defaults)
    step: Objective | UserStep  # what one micro-batch computes: the built-in loss or training_step
    init_report: dict[str, Any] | None = None  # what model.init_from loaded, when it ran


def build_components(
    cfg: Config,
    device: torch.device,
    *,
    init_weights: bool = True,
    rank: int = 0,
    world_size: int = 1,
    preprocessing: Preprocessing | None = None,
) -> Components:
    """Data (this rank's shard), objective and model on `device`, with model.freeze applied.

    `init_weights=False` skips model.init_from: a checkpoint's weights (resume, eval) replace them anyway.
    `preprocessing` (a checkpoint's) is applied to the data instead of fitting it again.
    """
    data = build_data(
        cfg.data,
        seed=cfg.seed,
        device=device,
        integer_inputs=takes_token_ids(cfg.model),
        rank=rank,
        world_size=world_size,
        preprocessing=preprocessing,
    )
    objective = build_objective(cfg.loss, data.spec)
    model = build_model(cfg.model, data.spec, objective.name, cfg.trainer.activation_checkpointing)
    refuse_with_training_step(cfg.trainer.adversarial, model)  # exit 2 before any weights load
    report = None
    if init_weights and cfg.model.init_from is not None:
        report = init_from(model, cfg.model.init_from, cfg.model.init_strict)
    freeze(model, cfg.model.freeze)
    objective.loss_fn.to(device)
    user_step = has_training_step(model)
    # no defaults for a model's own training_step: what it returns decides what can be measured
    entries = cfg.metrics if cfg.metrics is not None or not user_step else []
    spec = data.spec
    metrics = build_metrics(entries, spec.task, spec.num_classes, math.prod(spec.target_shape))
    step = UserStep() if user_step else objective
    return Components(data, objective, model.to(device), metrics.to(device), step, report)
