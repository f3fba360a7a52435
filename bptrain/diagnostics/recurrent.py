"""The error signal through time in recurrent layers (nn.RNN, nn.LSTM, nn.GRU).

The gradient of the loss w.r.t. an RNN's output sequence only holds each step's
*direct* contribution: the fused kernel hides the recurrence, so ``retain_grad``
on that tensor misses what flows back through h_{t+1}. To measure the total
∂L/∂h_t, the layer is unrolled one step at a time on a copy (same weights, same
math), so every hidden state is a tensor of its own; ∂L/∂h_t is then the
gradient reaching the step's output plus the one reaching the carried state.
Unidirectional layers only; for stacked layers the top layer's h_t is reported.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bptrain.diagnostics.batches import call_model


def _unrolled_forward(rnn: nn.RNNBase, steps: list[tuple[Tensor, Tensor]]) -> Callable[..., Any]:
    cls_forward = type(rnn).forward
    time_dim = 1 if rnn.batch_first else 0

    def forward(self: nn.RNNBase, input: Tensor, hx: Any = None) -> Any:
        unbatched = input.dim() == 2
        axis = 0 if unbatched else time_dim
        outputs = []
        state = hx
        for t in range(input.shape[axis]):
            out_t, state = cls_forward(self, input.narrow(axis, t, 1), state)
            hidden = state[0] if isinstance(state, tuple) else state
            out_t.retain_grad()
            hidden.retain_grad()
            steps.append((out_t, hidden))
            outputs.append(out_t)
        return torch.cat(outputs, dim=axis), state

    return forward


def _step_norm(out_t: Tensor, hidden: Tensor) -> float:
    direct = out_t.grad if out_t.grad is not None else torch.zeros_like(out_t)
    carried = hidden.grad[-1] if hidden.grad is not None else torch.zeros_like(hidden[-1])
    top = direct.reshape(carried.shape) if direct.numel() == carried.numel() else direct
    total = top + carried if top.shape == carried.shape else top
    return float(total.detach().double().norm())


def signal_through_time(
    model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], batch: tuple[Any, Any]
) -> list[dict[str, Any]]:
    """‖∂L/∂h_t‖ for t = 1..T and its per-step factor, for every recurrent layer."""
    results: list[dict[str, Any]] = []
    names = [n for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    for name in names:
        replica = copy.deepcopy(model)
        rnn = replica.get_submodule(name)
        assert isinstance(rnn, nn.RNNBase)
        if rnn.bidirectional:
            results.append({"module": name, "skipped": "bidirectional layers are not analysed"})
            continue
        steps: list[tuple[Tensor, Tensor]] = []
        rnn.forward = types.MethodType(_unrolled_forward(rnn, steps), rnn)  # type: ignore[method-assign]
        with torch.enable_grad():
            loss = loss_fn(call_model(replica, batch[0]), batch[1])
            loss.backward()
        norms = [_step_norm(out_t, hidden) for out_t, hidden in steps]
        factors = [a / b for a, b in itertools.pairwise(norms) if b > 0]
        results.append(
            {
                "module": name,
                "signal_norm_through_time": norms,
                "factor_per_step": statistics.median(factors) if factors else None,
                "first_last_ratio": norms[0] / norms[-1] if norms and norms[-1] > 0 else math.nan,
            }
        )
    return results
