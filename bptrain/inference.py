"""Using a trained model outside the loop: load weights (checkpoint or safetensors) and evaluate a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bptrain.components import build_components
from bptrain.config import Config
from bptrain.errors import UserError
from bptrain.evaluate import evaluate
from bptrain.runtime import Precision, resolve_device, seed_everything
from bptrain.transfer import load_into, load_weights

__all__ = ["evaluate_checkpoint", "load_into", "load_weights"]


def evaluate_checkpoint(cfg: Config, checkpoint: Path, split: str) -> dict[str, Any]:
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.seed, deterministic=False)
    # the checkpoint's weights replace any init_from
    parts = build_components(cfg, device, init_weights=False)
    data, objective, model = parts.data, parts.objective, parts.model
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
