"""Using a trained model outside the loop: load weights (checkpoint or safetensors) and evaluate a split."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

from bptrain.checkpoint import load_checkpoint
from bptrain.components import build_components
from bptrain.config import Config
from bptrain.data import Batches, DataBundle
from bptrain.errors import UserError
from bptrain.evaluate import evaluate
from bptrain.losses import Objective
from bptrain.preprocess import stored_preprocessing
from bptrain.runtime import Precision, resolve_device, seed_everything
from bptrain.transfer import load_into, load_weights

__all__ = ["evaluate_checkpoint", "load_into", "load_weights"]


def load_model_and_split(
    cfg: Config, checkpoint: Path, split: str
) -> tuple[nn.Module, Batches, Objective, Precision, DataBundle]:
    """The config's model with the checkpoint's weights, and the batches of one split."""
    parts, batches, precision = _load(cfg, checkpoint, split)
    return parts.model, batches, parts.objective, precision, parts.data


def _load(cfg: Config, checkpoint: Path, split: str) -> tuple[Any, Batches, Precision]:
    """The built components (checkpoint weights loaded), one split's batches, and the precision."""
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
    load_into(parts.model, load_weights(checkpoint), checkpoint)
    batches = parts.data.val if split == "val" else parts.data.test
    if batches is None:
        fraction = "data.val_fraction" if split == "val" else "data.test_fraction"
        raise UserError(
            f"the data has no {split} split; set {fraction} (or give x_{split}/y_{split} arrays) in the config."
        )
    return parts, batches, Precision.create(cfg.trainer.precision, device)


def evaluate_checkpoint(cfg: Config, checkpoint: Path, split: str) -> dict[str, Any]:
    parts, batches, precision = _load(cfg, checkpoint, split)
    metrics = evaluate(parts.model, batches, parts.objective, precision, split, parts.metrics)
    return {
        "split": split,
        "checkpoint": str(checkpoint),
        "samples": batches.num_samples,
        **metrics,
    }
