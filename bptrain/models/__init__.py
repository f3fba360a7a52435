"""Models: from the ``model`` config section and the data's shape to an ``nn.Module``."""

from __future__ import annotations

import math

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
    if isinstance(cfg, CustomModel):
        model = build_custom(cfg)
        check_fits_data(model, torch.zeros(2, *spec.input_shape), out_shape, cfg.class_path)
    elif isinstance(cfg, CNNModel):
        model = build_cnn(
            cfg, spec.input_shape, math.prod(out_shape), log_softmax, activation_checkpointing
        )
    elif isinstance(cfg, RNNModel):
        model = build_rnn(cfg, spec.input_shape, out_shape, log_softmax)
    elif isinstance(cfg, TransformerModel):
        model = build_transformer(
            cfg, spec.input_shape, out_shape, log_softmax, activation_checkpointing
        )
    else:
        model = build_mlp(
            cfg, spec.in_features, math.prod(out_shape), log_softmax, activation_checkpointing
        )
    return model


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
