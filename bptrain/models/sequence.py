"""What the sequence models (rnn, transformer) share: reading the input layout and deciding
between one output per sequence (many-to-one) and one per step (many-to-many)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bptrain.errors import UserError


@dataclass(frozen=True)
class SequenceLayout:
    steps: int  # T
    features: int | None  # F per step; None for token ids
    per_step: int | None  # outputs per step when many-to-many, else None
    out_features: int  # outputs per sequence when many-to-one


def sequence_layout(
    name: str,
    input_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    output: str,
    tokens: bool,
) -> SequenceLayout:
    """Check the data fits a sequence model and pick many-to-one or many-to-many.

    ``output`` is the config's choice: `auto` goes per step when the targets carry a step axis
    of the input's length beyond the output width (class labels (N, T), values (N, T, D)).
    """
    if tokens and len(input_shape) != 1:
        raise UserError(
            f"model {name} with vocab_size expects token ids of shape (N, T), but the data gives "
            f"(N, {', '.join(map(str, input_shape))}). Drop model.vocab_size for real-valued features."
        )
    if not tokens and len(input_shape) not in (1, 2):
        raise UserError(
            f"model {name} expects sequences of shape (N, T, F) (or (N, T) scalars, or token ids with "
            f"model.vocab_size), but the data gives (N, {', '.join(map(str, input_shape))})."
        )
    steps = input_shape[0]
    features = None if tokens else (input_shape[1] if len(input_shape) == 2 else 1)
    total = math.prod(out_shape)
    has_step_axis = len(out_shape) >= 2 and out_shape[0] == steps
    if output == "sequence":
        if not out_shape or out_shape[0] != steps:
            raise UserError(
                f"model.output is sequence, but the targets' shape (N, {', '.join(map(str, out_shape))}) has "
                f"no step axis of the input's length {steps}. Give per-step targets (N, {steps}, ...) "
                "or use a many-to-one output."
            )
        return SequenceLayout(steps, features, max(total // steps, 1), total)
    if output == "auto" and has_step_axis:
        return SequenceLayout(steps, features, total // steps, total)
    return SequenceLayout(steps, features, None, total)
