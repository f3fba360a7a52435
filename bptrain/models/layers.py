"""Activation, normalisation, weight-init and checkpointing helpers shared by every built-in model.

One name in the config maps to one entry here, so adding an activation or an
init scheme is a one-line change that every model picks up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

ACTIVATIONS: dict[str, Callable[[float], nn.Module]] = {
    "sigmoid": lambda slope: nn.Sigmoid(),
    "tanh": lambda slope: nn.Tanh(),
    "relu": lambda slope: nn.ReLU(),
    "leaky_relu": lambda slope: nn.LeakyReLU(slope),
    "elu": lambda slope: nn.ELU(),
    "selu": lambda slope: nn.SELU(),
    "gelu": lambda slope: nn.GELU(),
}


def activation(name: str, leaky_relu_slope: float = 0.01) -> nn.Module:
    return ACTIVATIONS[name](leaky_relu_slope)


def norm_1d(name: str, width: int) -> nn.Module | None:
    if name == "batchnorm":
        return nn.BatchNorm1d(width)
    if name == "layernorm":
        return nn.LayerNorm(width)
    return None


def norm_nd(name: str, channels: int, dims: int) -> nn.Module:
    """Normalisation after a conv: batchnorm per channel, `layernorm` as GroupNorm with one group
    (over channels and positions, independent of the batch), or nothing."""
    if name == "batchnorm":
        return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    if name == "layernorm":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def init_weights(
    module: nn.Module,
    scheme: str,
    activation_name: str,
    gain: float = 1.0,
    leaky_relu_slope: float = 0.01,
) -> None:
    """Initialise every Linear/Conv weight by `scheme` (times `gain`); biases start at zero.

    Kaiming uses the ReLU gain (sigma_w^2 = 2 / fan_in), or the leaky-ReLU gain for leaky_relu; with
    SELU it uses the linear gain (LeCun normal), which is what SELU's self-normalisation assumes.
    Xavier uses gain 1 (sigma_w^2 = 2 / (fan_in + fan_out)). `default` keeps PyTorch's own init.

    Recurrent layers: input-to-hidden weights follow `scheme`, hidden-to-hidden weights are
    orthogonal (their repeated product neither shrinks nor grows the error signal at the start),
    biases are 0 except the LSTM forget gate's, which starts at 1 so memories are kept by default.
    Attention input projections follow `scheme` like any Linear.
    """
    if scheme == "default":
        return
    nonlinearity = {"leaky_relu": "leaky_relu", "selu": "linear"}.get(activation_name, "relu")

    def init_matrix(w: torch.Tensor) -> None:
        _init_matrix(w, scheme, nonlinearity, gain, leaky_relu_slope)

    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d):
            init_matrix(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.RNNBase):
            for name, param in layer.named_parameters():
                if name.startswith("weight_ih"):
                    init_matrix(param)
                elif name.startswith("weight_hh"):
                    nn.init.orthogonal_(param)
                elif name.startswith("bias"):
                    nn.init.zeros_(param)
                    if isinstance(layer, nn.LSTM) and name.startswith("bias_ih"):
                        hidden = param.shape[0] // 4  # gate order: input, forget, cell, output
                        nn.init.ones_(param[hidden : 2 * hidden])
        elif isinstance(layer, nn.MultiheadAttention) and layer.in_proj_weight is not None:
            init_matrix(layer.in_proj_weight)
            if layer.in_proj_bias is not None:
                nn.init.zeros_(layer.in_proj_bias)


def _init_matrix(
    w: torch.Tensor, scheme: str, nonlinearity: str, gain: float, leaky_relu_slope: float
) -> None:
    with torch.no_grad():
        if scheme == "xavier_uniform":
            nn.init.xavier_uniform_(w, gain=gain)
        elif scheme == "xavier_normal":
            nn.init.xavier_normal_(w, gain=gain)
        elif scheme == "kaiming_uniform":
            nn.init.kaiming_uniform_(w, a=leaky_relu_slope, nonlinearity=nonlinearity)
            w.mul_(gain)
        elif scheme == "kaiming_normal":
            nn.init.kaiming_normal_(w, a=leaky_relu_slope, nonlinearity=nonlinearity)
            w.mul_(gain)
        elif scheme == "orthogonal":
            nn.init.orthogonal_(w, gain=gain)
        else:
            raise AssertionError(f"unknown init {scheme}")


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """Apply blocks in order; with `checkpointing` (while training with autograd on), keep only
    each block's input and recompute its activations during the backward pass.

    Memory for activations drops from all blocks' intermediates to one block's plus the block
    inputs, for about one extra forward pass. BatchNorm running statistics are updated twice
    per step when recomputed (a known, small effect on their momentum).
    """
    recompute = checkpointing and torch.is_grad_enabled()
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if recompute and block.training else block(x)
    return x
