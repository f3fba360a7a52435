"""Using a trained model outside the loop: load weights (checkpoint or safetensors) and evaluate a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bptrain.checkpoint import load_checkpoint, model_state
from bptrain.config import Config
from bptrain.data import build_data
from bptrain.errors import UserError
from bptrain.evaluate import evaluate
from bptrain.losses import build_objective
from bptrain.models import build_model, takes_token_ids
from bptrain.runtime import Precision, resolve_device, seed_everything


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a bptrain checkpoint, a bare state_dict file, or a .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"weights file not found: {path}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise UserError(f"cannot read {path}: {err}") from None
    return model_state(load_checkpoint(path), path)


def load_into(
    model: nn.Module, weights: dict[str, torch.Tensor], path: Path, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load weights, turning shape/key mismatches into a readable error (strict) or a report (not strict)."""
    own = model.state_dict()
    wrong_shape = [
        k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(v.shape)
    ]
    if wrong_shape:
        details = ", ".join(
            f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
            for k in wrong_shape[:5]
        )
        raise UserError(
            f"weights in {path} do not fit the model built from the config ({details})."
        )
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if strict and (missing or unexpected):
        raise UserError(
            f"weights in {path} do not match the model: missing {missing[:8] or 'none'}, unexpected {unexpected[:8] or 'none'}. "
            "Check that the config's model section is the one the weights were trained with."
        )
    model.load_state_dict(weights, strict=False)
    return missing, unexpected


def evaluate_checkpoint(cfg: Config, checkpoint: Path, split: str) -> dict[str, Any]:
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.seed, deterministic=False)
    data = build_data(
        cfg.data, seed=cfg.seed, device=device, integer_inputs=takes_token_ids(cfg.model)
    )
    objective = build_objective(cfg.loss, data.spec)
    model = build_model(cfg.model, data.spec, objective.name).to(device)
    objective.loss_fn.to(device)
    load_into(model, load_weights(checkpoint), checkpoint)
    batches = data.val if split == "val" else data.test
    if batches is None:
        fraction = "data.val_fraction" if split == "val" else "data.test_fraction"
        raise UserError(
            f"the data has no {split} split; set {fraction} (or give x_{split}/y_{split} arrays) in the config."
        )
    metrics = evaluate(
        model, batches, objective, Precision.create(cfg.trainer.precision, device), split
    )
    return {
        "split": split,
        "checkpoint": str(checkpoint),
        "samples": batches.num_samples,
        **metrics,
    }
