"""Data: from the ``data`` config section to batches, plus what the model must fit (``DataSpec``).

``build_data`` reads the source, holds out validation/test fractions (seeded),
normalises with training statistics only, infers the task (integer targets are
classes, real targets are regression), and returns loaders whose order is a pure
function of (seed, epoch): that is what makes mid-epoch resume exact.

What it fits on the training split (mean/std, the csv label mapping) comes back as the
bundle's ``preprocessing`` (``bptrain.preprocess``); given a trained model's
preprocessing instead, it applies that and fits nothing, so evaluating on new data
measures the model as it will be used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from bptrain.config import ImageFolderData
from bptrain.data.bundle import DataBundle, DataSpec, InputSpace, hold_out
from bptrain.data.images import build_imagefolder
from bptrain.data.loaders import Batches, TensorBatches, dataloader_batches, split_arguments
from bptrain.data.sources import Arrays, Splits, read_source
from bptrain.errors import UserError

if TYPE_CHECKING:
    from bptrain.preprocess import Preprocessing

__all__ = ["Batches", "DataBundle", "DataSpec", "InputSpace", "build_data"]


def build_data(
    cfg: object,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    integer_inputs: bool = False,
    preprocessing: Preprocessing | None = None,
) -> DataBundle:
    """Turn a data config into train/val/test batches on (or for) ``device``.

    Integer inputs become float32 unless ``integer_inputs`` (the model embeds token ids, see
    ``models.takes_token_ids``): then they stay int64 and are never normalised.
    ``preprocessing`` (a trained model's) is applied as it is instead of being fitted here.
    """
    from bptrain.preprocess import Preprocessing

    if isinstance(cfg, ImageFolderData):
        return build_imagefolder(cfg, seed, device, rank, world_size, preprocessing)
    if getattr(cfg, "class_path", None) is not None:  # the user's own Datasets
        from bptrain.data.user import build_user_data

        return build_user_data(cfg, seed, device, rank, world_size)
    given = preprocessing
    splits = read_source(cfg, seed, given.class_names if given is not None else None)
    train, val, test = _held_out(splits, cfg, seed)
    spec = _infer_spec(train, [s for s in (val, test) if s is not None])
    if given is not None:
        spec = _trained_spec(given, spec)
    keep_tokens = integer_inputs and spec.token_range is not None
    if cfg.normalize and keep_tokens:  # type: ignore[attr-defined]
        raise UserError(
            "data.normalize would turn the token ids the model embeds into real numbers; set data.normalize=false."
        )
    raw_range = (float(train[0].min()), float(train[0].max()))  # before any standardisation
    mean = std = None
    if given is not None:  # the trained model's statistics, never these data's
        if given.mean is not None and given.std is not None:
            mean, std = given.mean.numpy(), given.std.numpy()
    elif cfg.normalize:  # type: ignore[attr-defined]
        mean, std = _feature_stats(train[0])
    space = None if keep_tokens else _input_space(raw_range, mean, std)
    if mean is not None:
        train, val, test = (
            None if s is None else ((s[0] - mean) / std, s[1]) for s in (train, val, test)
        )  # type: ignore[misc]
    fitted = given or Preprocessing(
        spec,
        None if mean is None else torch.from_numpy(np.asarray(mean, dtype=np.float32)),
        None if std is None else torch.from_numpy(np.asarray(std, dtype=np.float32)),
        class_names=splits.class_names,
        feature_names=splits.feature_names,
        target_name=getattr(cfg, "target", None) if splits.feature_names else None,
        integer_inputs=keep_tokens,
        source=cfg.source,  # type: ignore[attr-defined]
    )

    def batches(arrays: Arrays | None, training: bool) -> Batches | None:
        if arrays is None:
            return None
        x, y = _to_tensors(arrays, spec, keep_tokens)
        if cfg.loader == "dataloader":  # type: ignore[attr-defined]
            return dataloader_batches(
                TensorDataset(x, y), cfg, training, seed, device, rank, world_size
            )
        return TensorBatches(
            _to_device_if_it_fits(x, device),
            _to_device_if_it_fits(y, device),
            **split_arguments(cfg, training, seed, rank, world_size),
        )

    return DataBundle(
        batches(train, True),  # type: ignore[arg-type]
        batches(val, False),
        batches(test, False),
        spec,
        fitted,
        space,
    )


def _held_out(splits: Splits, cfg: Any, seed: int) -> tuple[Arrays, Arrays | None, Arrays | None]:
    """(train, val, test): the source's own splits, else ``data.test_fraction`` and
    ``data.val_fraction`` of the training samples held out (seeded)."""
    train, val, test = splits.train, splits.val, splits.test
    rng = np.random.default_rng(seed + 1)  # its own stream: another source keeps the split seed
    if test is None and cfg.test_fraction > 0:
        train, test = hold_out(train, cfg.test_fraction, rng, "test")
    if val is None and cfg.val_fraction > 0:
        # a fraction of all samples: scaled up to what the test split left
        left = 1 - (cfg.test_fraction if splits.test is None else 0)
        train, val = hold_out(train, cfg.val_fraction / left, rng, "validation")
    return train, val, test


def _to_tensors(
    arrays: Arrays, spec: DataSpec, keep_tokens: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs as float32 (int64 token ids when the model embeds them); targets as int64 class
    labels shaped (N, *target_shape), or float32 regression targets shaped (N, outputs)."""
    x_dtype = torch.int64 if keep_tokens else torch.float32
    x = torch.as_tensor(np.ascontiguousarray(arrays[0]), dtype=x_dtype)
    if spec.task == "classification":
        y = torch.as_tensor(np.asarray(arrays[1]), dtype=torch.int64).reshape(
            len(arrays[1]), *spec.target_shape
        )
    else:
        y = torch.as_tensor(np.asarray(arrays[1]), dtype=torch.float32).reshape(len(arrays[1]), -1)
    return x, y


def _trained_spec(given: Preprocessing, found: DataSpec) -> DataSpec:
    """The trained model's data spec, after checking these data fit it (shape, classes, task)."""
    trained = given.spec
    if tuple(found.input_shape) != tuple(trained.input_shape):
        raise UserError(
            f"data: inputs have shape (N, {', '.join(map(str, found.input_shape))}) but the model was trained "
            f"on (N, {', '.join(map(str, trained.input_shape))})."
        )
    if found.task != trained.task:
        raise UserError(
            f"data: the targets look like {found.task} but the model was trained for {trained.task}."
        )
    if trained.task == "classification" and (found.num_classes or 0) > (trained.num_classes or 0):
        raise UserError(
            f"data: class label {(found.num_classes or 1) - 1} is out of range; the model knows "
            f"{trained.num_classes} classes (0..{(trained.num_classes or 1) - 1})."
        )
    return trained


def _input_space(
    raw_range: tuple[float, float], mean: np.ndarray | None, std: np.ndarray | None
) -> InputSpace:
    """Raw units for adversarial attacks: the training inputs' range and the standardisation."""
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    return InputSpace(
        *raw_range,
        None if mean is None else as_tensor(mean),
        None if std is None else as_tensor(std),
    )


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
    token_range = None
    if np.issubdtype(x.dtype, np.integer):
        low = min([int(x.min())] + [int(o[0].min()) for o in others if o[0].size])
        if low >= 0:  # non-negative integers can be token ids for an embedding
            token_range = max([int(x.max())] + [int(o[0].max()) for o in others if o[0].size]) + 1
    if np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_):
        labels = np.concatenate([y.reshape(-1)] + [o[1].reshape(-1) for o in others])
        for _, other_y in others:
            if other_y.shape[1:] != y.shape[1:]:
                raise UserError(
                    f"data: validation/test labels have shape {other_y.shape[1:]} per sample but training labels {y.shape[1:]}."
                )
        if labels.min() < 0:
            raise UserError(f"data: class labels must be 0..C-1, found {labels.min()}.")
        # (N,) or (N, 1): one label per sample; (N, T, ...): a label per step (many-to-many).
        per_step = () if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1) else tuple(y.shape[1:])
        return DataSpec(
            "classification", tuple(x.shape[1:]), int(labels.max()) + 1, per_step, token_range
        )
    if not np.issubdtype(y.dtype, np.floating):
        raise UserError(
            f"data: y must be integer class labels or real-valued targets, got dtype {y.dtype}."
        )
    return DataSpec("regression", tuple(x.shape[1:]), None, tuple(y.shape[1:]) or (1,), token_range)


def _feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean/std over samples, and over positions for sequences and images (channel statistics).

    Layouts: (N, F) tabular, per feature; (N, T, F) sequences, per feature F over samples and
    steps; (N, C, H, W) and higher, per channel C over samples and pixels.
    """
    x = x.astype(np.float64, copy=False)
    channel = {2: 1, 3: 2}.get(x.ndim, 1)
    axes = tuple(i for i in range(x.ndim) if i != channel)
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    return mean[0].astype(np.float32), np.where(std > 1e-8, std, 1.0)[0].astype(np.float32)


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
