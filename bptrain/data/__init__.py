"""Data: from the ``data`` config section to batches, plus what the model must fit (``DataSpec``).

``build_data`` reads the source, holds out validation/test fractions (seeded),
normalises with training statistics only, infers the task (integer targets are
classes, real targets are regression), and returns loaders whose order is a pure
function of (seed, epoch): that is what makes mid-epoch resume exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from bptrain.data.loaders import Batches, DataLoaderBatches, TensorBatches
from bptrain.data.sources import Arrays, read_source
from bptrain.errors import UserError

__all__ = ["Batches", "DataBundle", "DataSpec", "build_data"]


@dataclass(frozen=True)
class DataSpec:
    """What the data tells the model and the loss, so users never repeat it in the config."""

    task: Literal["classification", "regression"]
    input_shape: tuple[int, ...]
    num_classes: int | None
    target_shape: tuple[int, ...]

    @property
    def in_features(self) -> int:
        return int(np.prod(self.input_shape))


@dataclass
class DataBundle:
    train: Batches
    val: Batches | None
    test: Batches | None
    spec: DataSpec


def build_data(
    cfg: object, seed: int, device: torch.device, rank: int = 0, world_size: int = 1
) -> DataBundle:
    """Turn a data config into train/val/test batches on (or for) ``device``."""
    splits = read_source(cfg, seed)
    train, val, test = splits.train, splits.val, splits.test
    rng = np.random.default_rng(
        seed + 1
    )  # a separate stream, so changing the source keeps the split seed stable
    if test is None and cfg.test_fraction > 0:  # type: ignore[attr-defined]
        train, test = _hold_out(train, cfg.test_fraction, rng, "test")  # type: ignore[attr-defined]
    if val is None and cfg.val_fraction > 0:  # type: ignore[attr-defined]
        train, val = _hold_out(
            train,
            cfg.val_fraction / (1 - (cfg.test_fraction if splits.test is None else 0)),
            rng,
            "validation",
        )  # type: ignore[attr-defined]
    spec = _infer_spec(train, [s for s in (val, test) if s is not None])
    if cfg.normalize:  # type: ignore[attr-defined]
        mean, std = _feature_stats(train[0])
        train, val, test = (
            None if s is None else ((s[0] - mean) / std, s[1]) for s in (train, val, test)
        )  # type: ignore[misc]

    def to_tensors(arrays: Arrays) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(np.ascontiguousarray(arrays[0]), dtype=torch.float32)
        if spec.task == "classification":
            y = torch.as_tensor(np.asarray(arrays[1]), dtype=torch.int64).reshape(-1)
        else:
            y = torch.as_tensor(np.asarray(arrays[1]), dtype=torch.float32).reshape(
                len(arrays[1]), -1
            )
        return x, y

    def batches(arrays: Arrays | None, training: bool) -> Batches | None:
        if arrays is None:
            return None
        x, y = to_tensors(arrays)
        common = dict(
            batch_size=cfg.batch_size,  # type: ignore[attr-defined]
            shuffle=training and cfg.shuffle,  # type: ignore[attr-defined]
            drop_last=training and cfg.drop_last,  # type: ignore[attr-defined]
            seed=seed,
            rank=rank,
            world_size=world_size,
            even_shards=training,
        )
        if cfg.loader == "dataloader":  # type: ignore[attr-defined]
            return DataLoaderBatches(
                x, y, num_workers=cfg.num_workers, pin_memory=device.type == "cuda", **common
            )  # type: ignore[attr-defined,arg-type]
        return TensorBatches(
            _to_device_if_it_fits(x, device), _to_device_if_it_fits(y, device), **common
        )  # type: ignore[arg-type]

    return DataBundle(batches(train, True), batches(val, False), batches(test, False), spec)  # type: ignore[arg-type]


def _hold_out(
    arrays: Arrays, fraction: float, rng: np.random.Generator, what: str
) -> tuple[Arrays, Arrays]:
    x, y = arrays
    n_out = round(len(x) * fraction)
    if n_out == 0 or n_out >= len(x):
        raise UserError(
            f"cannot hold out a {what} fraction of {fraction:.3g} from {len(x)} samples; change data.val_fraction/test_fraction."
        )
    order = rng.permutation(len(x))
    keep, out = order[n_out:], order[:n_out]
    return (x[keep], y[keep]), (x[out], y[out])


def _infer_spec(train: Arrays, others: list[Arrays]) -> DataSpec:
    x, y = train
    if x.ndim < 2 or len(x) == 0:
        raise UserError(
            f"data: x must have shape (samples, features...) with at least one sample; got {x.shape}."
        )
    for other_x, _ in others:
        if other_x.shape[1:] != x.shape[1:]:
            raise UserError(
                f"data: validation/test inputs have shape {other_x.shape[1:]} per sample but training inputs {x.shape[1:]}."
            )
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise UserError(f"data: x must be real numbers, got dtype {x.dtype}.")
    if np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_):
        labels = np.concatenate([y.reshape(-1)] + [o[1].reshape(-1) for o in others])
        if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
            raise UserError(
                f"data: integer targets are class labels and must have shape (samples,), got {y.shape}."
            )
        if labels.min() < 0:
            raise UserError(f"data: class labels must be 0..C-1, found {labels.min()}.")
        return DataSpec("classification", tuple(x.shape[1:]), int(labels.max()) + 1, ())
    if not np.issubdtype(y.dtype, np.floating):
        raise UserError(
            f"data: y must be integer class labels or real-valued targets, got dtype {y.dtype}."
        )
    return DataSpec("regression", tuple(x.shape[1:]), None, tuple(y.shape[1:]) or (1,))


def _feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean/std over samples (and over positions for sequences/images: channel statistics)."""
    axes = (0,) if x.ndim == 2 else tuple(i for i in range(x.ndim) if i != 1)
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    return mean[0], np.where(std > 1e-8, std, 1.0)[0]


def _to_device_if_it_fits(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Keep in-memory data on the accelerator when it takes at most a quarter of free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if t.numel() * t.element_size() < free // 4:
            return t.to(device)
        return t.pin_memory()
    if device.type == "mps":
        return t.to(device)
    return t
