"""How grad-inspect's analyses feed a batch to a model: the one calling convention they share.

A batch is ``(x, y)``; ``x`` is a tensor (``model(x)``), a tuple or list of
positional inputs (``model(*x)``) or a dict of keyword inputs (``model(**x)``).
The recorder, the finite-difference check, the curvature and the recurrent
analysis all call the model through ``call_model`` so they see the same forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

LossFn = Callable[[Any, Any], Tensor]
Batch = tuple[Any, Any]


def call_model(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, tuple | list):
        return model(*x)
    return model(x)


def batch_size_of(x: Any) -> int:
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.ndim else 1
    if isinstance(x, tuple | list) and x:
        return batch_size_of(x[0])
    if isinstance(x, dict) and x:
        return batch_size_of(next(iter(x.values())))
    return 0
