"""The built-in Transformer encoder for sequences of token ids or feature vectors.

Pre-norm blocks (x + attn(LN(x)), then x + mlp(LN(x))) keep an identity path from the head
to the embeddings, which is why they train without the LR warm-up post-norm blocks need.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from bptrain.config import TransformerModel
from bptrain.errors import UserError
from bptrain.models.layers import init_weights
from bptrain.models.sequence import SequenceLayout, sequence_layout


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """The fixed encoding of Vaswani et al.: sin/cos at geometrically spaced frequencies."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : width // 2]
    return table


class Transformer(nn.Module):
    """Embed/project -> + positions -> pre-norm encoder blocks -> LayerNorm -> pooled or per-step head."""

    def __init__(
        self,
        cfg: TransformerModel,
        layout: SequenceLayout,
        out_shape: tuple[int, ...],
        log_softmax: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        d = cfg.d_model
        self.embed: nn.Module = (
            nn.Embedding(cfg.vocab_size, d)
            if cfg.vocab_size
            else nn.Linear(layout.features or 1, d)
        )
        self.tokens = cfg.vocab_size is not None
        if cfg.positional == "learned":
            self.positions = nn.Parameter(torch.zeros(cfg.max_len, d))
            nn.init.normal_(self.positions, std=0.02)
        elif cfg.positional == "sinusoidal":
            self.register_buffer(
                "positions", sinusoidal_positions(cfg.max_len, d), persistent=False
            )
        else:
            self.positions = None
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "cls" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d,
                cfg.num_heads,
                dim_feedforward=cfg.ff_mult * d,
                dropout=cfg.dropout,
                activation=cfg.activation,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, layout.per_step or layout.out_features)
        self.per_step, self.pool, self.causal = layout.per_step is not None, cfg.pool, cfg.causal
        self.max_len, self.out_shape, self.log_softmax = cfg.max_len, out_shape, log_softmax
        self.activation_checkpointing = activation_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            x = self.embed(x.long())
        else:
            x = x.unsqueeze(-1) if x.ndim == 2 else x
            x = self.embed(x.to(self.head.weight.dtype))  # float64 in a --check-gradients copy
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        steps = x.shape[1]
        if steps > self.max_len:
            raise ValueError(
                f"sequence of {steps} steps is longer than model.max_len {self.max_len}"
            )
        if self.positions is not None:
            x = x + self.positions[:steps]
        x = self.dropout(x)
        mask = (
            nn.Transformer.generate_square_subsequent_mask(steps, device=x.device)
            if self.causal
            else None
        )
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, mask, None, self.causal, use_reentrant=False)
            else:
                x = block(x, mask, None, self.causal)
        x = self.norm(x)
        if self.per_step:
            features = x[:, 1:] if self.cls is not None else x
        elif self.pool == "cls":
            features = x[:, 0]
        elif self.pool == "last":
            features = x[:, -1]
        elif self.pool == "max":
            features = x.amax(dim=1)
        else:
            features = x.mean(dim=1)
        out = self.head(features).reshape(x.shape[0], *self.out_shape)
        return torch.log_softmax(out, dim=-1) if self.log_softmax else out


def build_transformer(
    cfg: TransformerModel,
    input_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    log_softmax: bool,
    activation_checkpointing: bool = False,
) -> Transformer:
    layout = sequence_layout(
        "transformer", input_shape, out_shape, cfg.output, cfg.vocab_size is not None
    )
    needed = layout.steps + (1 if cfg.pool == "cls" else 0)
    if cfg.positional != "none" and needed > cfg.max_len:
        raise UserError(
            f"model.max_len is {cfg.max_len} but the sequences have {needed} steps; raise model.max_len."
        )
    model = Transformer(cfg, layout, out_shape, log_softmax, activation_checkpointing)
    init_weights(model, cfg.init, cfg.activation)
    return model
