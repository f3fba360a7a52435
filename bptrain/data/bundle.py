"""What a built data source hands the rest of bptrain: ``DataSpec``, ``InputSpace``, ``DataBundle``, and the
seeded hold-out split that every source (in-memory arrays, image folders) uses for val/test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from bptrain.data.loaders import Batches
from bptrain.data.sources import Arrays
from bptrain.errors import UserError


@dataclass(frozen=True)
class DataSpec:
    """What the data tells the model and the loss, so users never repeat it in the config."""

    task: Literal["classification", "regression"] | None  # None: dict samples without num_classes
    input_shape: tuple[int, ...]
    num_classes: int | None
    target_shape: tuple[int, ...]  # () for one class label per sample, (T,) for per-step labels
    token_range: int | None = (
        None  # max + 1 of integer-valued inputs (token ids); None for real inputs
    )
    dict_samples: bool = False  # a user dataset of dicts: only a model's training_step reads them

    @property
    def in_features(self) -> int:
        return int(np.prod(self.input_shape))


@dataclass(frozen=True)
class InputSpace:
    """The raw input units and how the model's (possibly normalised) inputs map back to them.

    Adversarial attacks measure epsilon and clamp to the valid range in raw units (pixels in
    [0, 1], say), whatever ``data.normalize`` did: ``to_raw`` undoes the normalisation,
    ``to_model`` reapplies it. ``low``/``high`` are the smallest and largest raw value of the
    training inputs (for image folders, [0, 1]).
    """

    low: float
    high: float
    mean: torch.Tensor | None = None  # shaped like one sample, broadcasting (per channel/feature)
    std: torch.Tensor | None = None

    @property
    def range(self) -> float:
        return self.high - self.low

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


@dataclass
class DataBundle:
    train: Batches
    val: Batches | None
    test: Batches | None
    spec: DataSpec
    # a bptrain.preprocess.Preprocessing, fitted on (or given for) the training split; not imported
    # here, since preprocess builds on this module's DataSpec
    preprocessing: Any = None
    input_space: InputSpace | None = None  # None for token ids (not differentiable)


def hold_out(
    arrays: Arrays, fraction: float, rng: np.random.Generator, what: str
) -> tuple[Arrays, Arrays]:
    """Split off a seeded random ``fraction`` of the samples (the validation or test split)."""
    x, y = arrays
    n_out = round(len(x) * fraction)
    if n_out == 0 or n_out >= len(x):
        raise UserError(
            f"cannot hold out a {what} fraction of {fraction:.3g} from {len(x)} samples; change data.val_fraction/test_fraction."
        )
    order = rng.permutation(len(x))
    keep, out = order[n_out:], order[:n_out]
    return (x[keep], y[keep]), (x[out], y[out])
