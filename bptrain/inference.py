"""Using a trained model outside the loop: load weights (checkpoint or safetensors) and evaluate a split."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bptrain.checkpoint import load_checkpoint
from bptrain.components import build_components
from bptrain.config import Config
from bptrain.errors import UserError
from bptrain.evaluate import evaluate
from bptrain.preprocess import stored_preprocessing
from bptrain.runtime import Precision, resolve_device, seed_everything
from bptrain.transfer import load_into, load_weights

__all__ = ["evaluate_checkpoint", "load_into", "load_weights"]


def evaluate_checkpoint(cfg: Config, checkpoint: Path, split: str) -> dict[str, Any]:
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.seed, deterministic=False)
    # the checkpoint's weights replace any init_from; its preprocessing (fitted on the training
    # data) is applied to the evaluated data, never re-fitted on it (0.1 checkpoints have none)
    saved = {} if checkpoint.suffix == ".safetensors" else load_checkpoint(checkpoint)
    preprocessing = stored_preprocessing(saved, checkpoint)
    if preprocessing is None:
        print(
            f"note: {checkpoint} stores no preprocessing (bptrain 0.1, or a weights-only file); "
            "fitting it on the evaluated config's training data, as 0.1 did.",
            file=sys.stderr,
        )
    parts = build_components(cfg, device, init_weights=False, preprocessing=preprocessing)
    data, objective, model = parts.data, parts.objective, parts.model
    load_into(model, load_weights(checkpoint), checkpoint)
    batches = data.val if split == "val" else data.test
    if batches is None:
        fraction = "data.val_fraction" if split == "val" else "data.test_fraction"
        raise UserError(
            f"the data has no {split} split; set {fraction} (or give x_{split}/y_{split} arrays) in the config."
        )
    precision = Precision.create(cfg.trainer.precision, device)
    metrics = evaluate(model, batches, objective, precision, split, parts.metrics)
    return {
        "split": split,
        "checkpoint": str(checkpoint),
        "samples": batches.num_samples,
        **metrics,
    }
