"""Models: from the ``model`` config section and the data's shape to an ``nn.Module``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch
from torch import nn

from bptrain.config import CNNModel, CustomModel, MLPModel, RNNModel, TransformerModel
from bptrain.data import DataSpec
from bptrain.errors import UserError
from bptrain.models.cnn import build_cnn
from bptrain.models.custom import build_custom, check_fits_data
from bptrain.models.mlp import build_mlp
from bptrain.models.rnn import build_rnn
from bptrain.models.transformer import build_transformer
from bptrain.steps import has_training_step

__all__ = ["build_model", "output_shape", "takes_token_ids"]

ModelCfg = MLPModel | CNNModel | RNNModel | TransformerModel | CustomModel
CHECKPOINTABLE = "mlp, cnn, cnn1d and transformer"


def output_shape(spec: DataSpec, loss_name: str) -> tuple[int, ...]:
    """Per-sample output shape the loss needs: class logits (per step for per-step labels),
    one logit for binary BCE, or the target's shape."""
    if spec.task == "classification":
        if loss_name == "bce_with_logits" and spec.num_classes == 2:
            return (*spec.target_shape, 1) if spec.target_shape else (1,)
        return (*spec.target_shape, spec.num_classes or 0)
    return spec.target_shape


def takes_token_ids(cfg: object) -> bool:
    """Whether the model embeds integer token ids (so the data must keep them integer)."""
    return getattr(cfg, "vocab_size", None) is not None


def build_model(
    cfg: ModelCfg, spec: DataSpec, loss_name: str, activation_checkpointing: bool = False
) -> nn.Module:
    """Build the network for this data. ``loss_name`` is the resolved loss (nll needs log-probabilities);
    ``activation_checkpointing`` is ``trainer.activation_checkpointing``."""
    out_shape = output_shape(spec, loss_name)
    log_softmax = loss_name == "nll"
    if activation_checkpointing and isinstance(cfg, CustomModel | RNNModel):
        kind = "model.class_path" if isinstance(cfg, CustomModel) else "model rnn"
        raise UserError(
            f"trainer.activation_checkpointing applies to the built-in {CHECKPOINTABLE} models, not {kind}. "
            "Set trainer.activation_checkpointing=false (in your own module, use torch.utils.checkpoint)."
        )
    if takes_token_ids(cfg):
        _check_tokens(cfg.vocab_size, spec)  # type: ignore[union-attr]
    if spec.dict_samples and not isinstance(cfg, CustomModel):
        raise UserError(
            "the data's samples are dicts, which only a model's own training_step can read; "
            "give model.class_path a module defining training_step(batch) (see docs/extending.md)."
        )
    if isinstance(cfg, CustomModel):
        model = build_custom(cfg)
        if not any(True for _ in model.parameters()):
            raise UserError(
                f"model.class_path '{cfg.class_path}' has no parameters, so there is nothing to train. "
                "Assign layers as attributes in __init__ (self.fc = nn.Linear(...)), keep lists of "
                "layers in nn.ModuleList, and wrap your own tensors in nn.Parameter."
            )
        # a model with training_step reads the batch itself: steps.check_user_step tries a real one
        if not has_training_step(model):
            if spec.dict_samples:
                raise UserError(
                    f"model.class_path '{cfg.class_path}' has no training_step(batch), but the "
                    "data's samples are dicts: define training_step to read them (docs/extending.md)."
                )
            check_fits_data(model, torch.zeros(2, *spec.input_shape), out_shape, cfg.class_path)
        return model

    def build() -> nn.Module:
        if isinstance(cfg, CNNModel):
            return build_cnn(
                cfg, spec.input_shape, math.prod(out_shape), log_softmax, activation_checkpointing
            )
        if isinstance(cfg, RNNModel):
            return build_rnn(cfg, spec.input_shape, out_shape, log_softmax)
        if isinstance(cfg, TransformerModel):
            return build_transformer(
                cfg, spec.input_shape, out_shape, log_softmax, activation_checkpointing
            )
        return build_mlp(
            cfg, spec.in_features, math.prod(out_shape), log_softmax, activation_checkpointing
        )

    _refuse_if_too_big(build, spec)
    return build()


# The least any training holds: float32 weights and their gradients, 8 bytes a parameter (Adam's
# two moments add 8 more; on a GPU they live there, so the host check counts only these).
BYTES_PER_PARAMETER = 8


def _refuse_if_too_big(build: Callable[[], nn.Module], spec: DataSpec) -> None:
    """Count the parameters on the meta device (no memory) and refuse a model this machine cannot hold.

    `model.hidden=[2000000000]` or a class label of 10^9 (an output layer that wide) would
    otherwise allocate for minutes, swap, and die without a word.
    """
    with torch.device("meta"):
        parameters = sum(p.numel() for p in build().parameters())
    need, have = parameters * BYTES_PER_PARAMETER, available_memory()
    if have is None or need <= have:
        return
    labels = (
        f" The data's largest class label is {spec.num_classes - 1}, so the output layer has "
        f"{spec.num_classes} units: are the labels 0..C-1?"
        if spec.num_classes is not None and spec.num_classes > 100_000
        else ""
    )
    raise UserError(
        f"the model has {parameters:,} parameters: training needs at least {need / 2**30:.1f} GiB "
        f"(weights and gradients) but this machine has {have / 2**30:.1f} GiB "
        f"available. Make the model smaller (model.hidden, model.channels...).{labels}"
    )


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable, else physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_tokens(vocab_size: int, spec: DataSpec) -> None:
    if spec.token_range is None:
        raise UserError(
            "model.vocab_size is set, so the model embeds token ids, but the data's inputs are not "
            "non-negative integers. Store x as integers (e.g. np.int64), or drop model.vocab_size for real-valued features."
        )
    if spec.token_range > vocab_size:
        raise UserError(
            f"the data has token ids up to {spec.token_range - 1} but model.vocab_size is {vocab_size}; "
            f"set model.vocab_size={spec.token_range} or more."
        )
