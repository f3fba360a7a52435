"""The built-in convolutional networks: `cnn` (2-D, images) and `cnn1d` (1-D, signals and time series).

One class serves both: stages of conv blocks (or ResNet basic blocks), each stage after the
first halving the resolution while it is at least 4, then global pooling and a linear head.
Halving only while the resolution allows is what lets one set of defaults work from 8x8 digits
to 64x64 images: small inputs are never pooled down to nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from bptrain.config import CNNModel
from bptrain.errors import UserError
from bptrain.models.layers import activation, init_weights, norm_nd, run_blocks


def _conv(dims: int, c_in: int, c_out: int, kernel: int, stride: int) -> nn.Module:
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    # No bias before a norm layer would be leaner, but keeping it makes norm: none work unchanged.
    return conv(c_in, c_out, kernel, stride=stride, padding=kernel // 2)


class ConvBlock(nn.Sequential):
    """conv -> [norm] -> activation."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int, cfg: CNNModel) -> None:
        super().__init__(
            _conv(dims, c_in, c_out, cfg.kernel_size, stride),
            norm_nd(cfg.norm, c_out, dims),
            activation(cfg.activation, cfg.leaky_relu_slope),
        )


class ResidualBlock(nn.Module):
    """ResNet basic block: act(x' + norm(conv(act(norm(conv(x)))))), with x' = x or a 1x1 projection.

    The identity path carries the error signal past both convs unchanged, which is why deep
    residual stacks train where plain ones of the same depth stall.
    """

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int, cfg: CNNModel) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(dims, c_in, c_out, cfg.kernel_size, stride),
            norm_nd(cfg.norm, c_out, dims),
            activation(cfg.activation, cfg.leaky_relu_slope),
            _conv(dims, c_out, c_out, cfg.kernel_size, 1),
            norm_nd(cfg.norm, c_out, dims),
        )
        self.shortcut = (
            nn.Identity()
            if c_in == c_out and stride == 1
            else nn.Sequential(
                (nn.Conv1d if dims == 1 else nn.Conv2d)(c_in, c_out, 1, stride=stride),
                norm_nd(cfg.norm, c_out, dims),
            )
        )
        self.act = activation(cfg.activation, cfg.leaky_relu_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.body(x))


class CNN(nn.Module):
    """Stages of conv blocks -> global pooling -> dropout -> linear head.

    ``blocks`` is a flat ModuleList (downsampling layers included), so activation
    checkpointing and the gradient diagnostics see one block per entry.
    """

    def __init__(
        self,
        cfg: CNNModel,
        dims: int,
        in_channels: int,
        size: tuple[int, ...],
        out_features: int,
        log_softmax: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.dims, self.channels_first = dims, cfg.channels_first
        self.activation_checkpointing = activation_checkpointing
        block_cls = ResidualBlock if cfg.residual else ConvBlock
        blocks: list[nn.Module] = []
        width = in_channels
        for stage, channels in enumerate(cfg.channels):
            stride = 1
            if stage > 0 and min(size) >= 4:
                size = tuple(s // 2 for s in size)
                if cfg.downsample == "stride":
                    stride = 2
                else:
                    pool = {
                        (1, "max"): nn.MaxPool1d,
                        (2, "max"): nn.MaxPool2d,
                        (1, "avg"): nn.AvgPool1d,
                        (2, "avg"): nn.AvgPool2d,
                    }[(dims, cfg.downsample)]
                    blocks.append(pool(2))
            for index in range(cfg.blocks_per_stage):
                blocks.append(block_cls(dims, width, channels, stride if index == 0 else 1, cfg))
                width = channels
        self.blocks = nn.ModuleList(blocks)
        self.global_pool = cfg.global_pool
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, out_features)
        self.log_softmax = log_softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == self.dims + 1:  # no channel axis: one channel
            x = x.unsqueeze(1)
        elif self.dims == 1 and not self.channels_first:  # (N, T, F) -> (N, F, T)
            x = x.transpose(1, 2)
        # the weights' dtype, not float32: a float64 copy (grad-inspect --check-gradients) must work
        x = run_blocks(self.blocks, x.to(self.head.weight.dtype), self.activation_checkpointing)
        x = x.flatten(2)
        x = x.mean(dim=2) if self.global_pool == "avg" else x.amax(dim=2)
        x = self.head(self.dropout(x))
        return torch.log_softmax(x, dim=-1) if self.log_softmax else x


def build_cnn(
    cfg: CNNModel,
    input_shape: tuple[int, ...],
    out_features: int,
    log_softmax: bool,
    activation_checkpointing: bool = False,
) -> CNN:
    dims = 1 if cfg.name == "cnn1d" else 2
    if dims == 2:
        if len(input_shape) not in (2, 3):
            raise UserError(
                f"model cnn needs images: inputs of shape (N, C, H, W) or (N, H, W), but the data gives "
                f"(N, {', '.join(map(str, input_shape))}). Use cnn1d for sequences (N, T, F), mlp for "
                "feature vectors; for the digits set set data.flatten=false."
            )
        in_channels = 1 if len(input_shape) == 2 else input_shape[0]
        size = tuple(input_shape[-2:])
    else:
        if len(input_shape) not in (1, 2):
            raise UserError(
                f"model cnn1d needs sequences: inputs of shape (N, T, F) or (N, T), but the data gives "
                f"(N, {', '.join(map(str, input_shape))}). Use cnn for images (N, C, H, W)."
            )
        if len(input_shape) == 1:
            in_channels, size = 1, (input_shape[0],)
        elif cfg.channels_first:
            in_channels, size = input_shape[0], (input_shape[1],)
        else:
            in_channels, size = input_shape[1], (input_shape[0],)
    model = CNN(cfg, dims, in_channels, size, out_features, log_softmax, activation_checkpointing)
    init_weights(model, cfg.init, cfg.activation, cfg.init_gain, cfg.leaky_relu_slope)
    return model
