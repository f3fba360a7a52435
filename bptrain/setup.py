"""Building data, objective and model from a config the way ``fit`` does, for the other commands.

``eval``, ``lr-find`` and ``grad-inspect`` must see exactly the model and data a
training run would: one function, so they cannot drift apart from each other.
(``fit`` spells the same steps out in ``train.py`` so the loop reads top to bottom.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bptrain.config import Config
from bptrain.data import DataBundle, build_data
from bptrain.losses import Objective, build_objective
from bptrain.models import build_model, takes_token_ids
from bptrain.transfer import freeze, init_from


@dataclass
class Setup:
    data: DataBundle
    objective: Objective
    model: nn.Module


def build_setup(cfg: Config, device: torch.device, transfer: bool = True) -> Setup:
    """Data, objective and model on `device`; `transfer` applies model.init_from and model.freeze."""
    data = build_data(
        cfg.data, seed=cfg.seed, device=device, integer_inputs=takes_token_ids(cfg.model)
    )
    objective = build_objective(cfg.loss, data.spec)
    model = build_model(cfg.model, data.spec, objective.name, cfg.trainer.activation_checkpointing)
    if transfer:
        if cfg.model.init_from is not None:
            init_from(model, cfg.model.init_from, cfg.model.init_strict)
        freeze(model, cfg.model.freeze)
    objective.loss_fn.to(device)
    return Setup(data, objective, model.to(device))
