"""The built-in multi-layer perceptron."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from bptrain.config import MLPModel
from bptrain.models.layers import activation, init_weights, norm_1d


class Residual(nn.Module):
    """x + f(x): gives the error signal a path around f, so it cannot vanish through depth."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


class MLP(nn.Module):
    """Linear -> [norm] -> activation -> [dropout] per hidden width, then a linear head.

    Layers live in one ``nn.Sequential`` named ``net`` so module paths are predictable
    (``net.0`` is the first Linear), which the gradient diagnostics report by name.
    Inputs of any shape are flattened per sample.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: list[int],
        activation_name: str = "relu",
        norm: str = "none",
        dropout: float = 0.0,
        residual: bool = False,
        leaky_relu_slope: float = 0.01,
        log_softmax: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        # sqrt(depth) segments (Chen et al., 2016): keeps ~sqrt(n) segment inputs plus one
        # segment's activations, instead of n layers' (one segment per layer would save nothing).
        self.segments = max(1, round(math.sqrt(len(hidden))))
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            block: list[nn.Module] = [nn.Linear(width, h)]
            normaliser = norm_1d(norm, h)
            if normaliser is not None:
                block.append(normaliser)
            block.append(activation(activation_name, leaky_relu_slope))
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            if residual and width == h:
                layers.append(Residual(nn.Sequential(*block)))
            else:
                layers.extend(block)
            width = h
        layers.append(nn.Linear(width, out_features))
        if log_softmax:
            layers.append(nn.LogSoftmax(dim=-1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            # Only segment inputs are kept; the rest is recomputed during the backward pass.
            return checkpoint_sequential(self.net, self.segments, x, use_reentrant=False)
        return self.net(x)


def build_mlp(
    cfg: MLPModel,
    in_features: int,
    out_features: int,
    log_softmax: bool,
    activation_checkpointing: bool = False,
) -> MLP:
    model = MLP(
        in_features,
        out_features,
        list(cfg.hidden),
        activation_name=cfg.activation,
        norm=cfg.norm,
        dropout=cfg.dropout,
        residual=cfg.residual,
        leaky_relu_slope=cfg.leaky_relu_slope,
        log_softmax=log_softmax,
        activation_checkpointing=activation_checkpointing,
    )
    init_weights(model, cfg.init, cfg.activation, cfg.init_gain, cfg.leaky_relu_slope)
    return model
