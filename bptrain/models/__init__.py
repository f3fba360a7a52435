"""Models: from the ``model`` config section and the data's shape to an ``nn.Module``."""

from __future__ import annotations

import torch
from torch import nn

from bptrain.config import CustomModel, MLPModel
from bptrain.data import DataSpec
from bptrain.models.custom import build_custom, check_fits_data
from bptrain.models.mlp import build_mlp

__all__ = ["build_model", "output_shape"]


def output_shape(spec: DataSpec, loss_name: str) -> tuple[int, ...]:
    """Per-sample output shape the loss needs: class logits, one logit for binary BCE, or the target's shape."""
    if spec.task == "classification":
        if loss_name == "bce_with_logits" and spec.num_classes == 2:
            return (1,)
        return (spec.num_classes or 0,)
    return spec.target_shape


def build_model(cfg: MLPModel | CustomModel, spec: DataSpec, loss_name: str) -> nn.Module:
    """Build the network for this data. ``loss_name`` is the resolved loss (nll needs log-probabilities)."""
    out_shape = output_shape(spec, loss_name)
    if isinstance(cfg, CustomModel):
        model = build_custom(cfg)
        check_fits_data(model, torch.zeros(2, *spec.input_shape), out_shape, cfg.class_path)
        return model
    out_features = int(torch.Size(out_shape).numel())
    return build_mlp(cfg, spec.in_features, out_features, log_softmax=loss_name == "nll")
