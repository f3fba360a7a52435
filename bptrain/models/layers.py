"""Activation, normalisation and weight-init tables shared by every built-in model.

One name in the config maps to one entry here, so adding an activation or an
init scheme is a one-line change that every model picks up.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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
    """
    if scheme == "default":
        return
    nonlinearity = {"leaky_relu": "leaky_relu", "selu": "linear"}.get(activation_name, "relu")
    for layer in module.modules():
        if not isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d):
            continue
        w = layer.weight
        if scheme == "xavier_uniform":
            nn.init.xavier_uniform_(w, gain=gain)
        elif scheme == "xavier_normal":
            nn.init.xavier_normal_(w, gain=gain)
        elif scheme == "kaiming_uniform":
            nn.init.kaiming_uniform_(w, a=leaky_relu_slope, nonlinearity=nonlinearity)
            w.data.mul_(gain)
        elif scheme == "kaiming_normal":
            nn.init.kaiming_normal_(w, a=leaky_relu_slope, nonlinearity=nonlinearity)
            w.data.mul_(gain)
        elif scheme == "orthogonal":
            nn.init.orthogonal_(w, gain=gain)
        else:
            raise AssertionError(f"unknown init {scheme}")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
