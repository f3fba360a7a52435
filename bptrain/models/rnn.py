"""The built-in recurrent network: `rnn` with cell rnn (Elman), lstm or gru.

The plain cell multiplies the error signal by the same recurrent Jacobian at every step back
in time, so over long sequences it vanishes (or explodes); the LSTM's additive cell state and
the GRU's update gate give it a path that is (almost) the identity. The adding-problem configs
show the difference.
"""

from __future__ import annotations

import torch
from torch import nn

from bptrain.config import RNNModel
from bptrain.models.layers import init_weights
from bptrain.models.sequence import SequenceLayout, sequence_layout

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RNN(nn.Module):
    """[embedding] -> recurrent layers -> [layernorm] -> dropout -> linear head (last/pooled step, or every step)."""

    def __init__(
        self,
        cfg: RNNModel,
        layout: SequenceLayout,
        out_shape: tuple[int, ...],
        log_softmax: bool = False,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embedding_dim) if cfg.vocab_size else None
        extra = {"nonlinearity": cfg.activation} if cfg.cell == "rnn" else {}
        self.rnn = CELLS[cfg.cell](
            input_size=cfg.embedding_dim if cfg.vocab_size else layout.features or 1,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            **extra,
        )
        width = cfg.hidden_size * (2 if cfg.bidirectional else 1)
        self.norm = nn.LayerNorm(width) if cfg.norm == "layernorm" else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, layout.per_step or layout.out_features)
        self.per_step, self.pool = layout.per_step is not None, cfg.pool
        self.hidden_size, self.bidirectional = cfg.hidden_size, cfg.bidirectional
        self.out_shape, self.log_softmax = out_shape, log_softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x.long())
        elif x.ndim == 2:  # (N, T) scalars: one feature per step
            x = x.unsqueeze(-1).to(self.head.weight.dtype)
        steps, _ = self.rnn(x)  # (N, T, directions * hidden)
        if self.per_step:
            features = steps
        elif self.pool == "mean":
            features = steps.mean(dim=1)
        elif self.pool == "max":
            features = steps.amax(dim=1)
        elif self.bidirectional:  # forward direction ends at T, backward direction at step 0
            h = self.hidden_size
            features = torch.cat([steps[:, -1, :h], steps[:, 0, h:]], dim=-1)
        else:
            features = steps[:, -1]
        out = self.head(self.dropout(self.norm(features))).reshape(x.shape[0], *self.out_shape)
        return torch.log_softmax(out, dim=-1) if self.log_softmax else out


def build_rnn(
    cfg: RNNModel, input_shape: tuple[int, ...], out_shape: tuple[int, ...], log_softmax: bool
) -> RNN:
    layout = sequence_layout("rnn", input_shape, out_shape, cfg.output, cfg.vocab_size is not None)
    model = RNN(cfg, layout, out_shape, log_softmax)
    init_weights(model, cfg.init, "tanh" if cfg.cell != "rnn" else cfg.activation)
    return model
