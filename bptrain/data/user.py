"""The user's own datasets: ``data.class_path`` names a factory (or class) returning torch Datasets.

The named callable is called with ``data.init_args`` and may return

- one ``Dataset`` (training only: no validation, no test),
- a tuple or list ``(train, val)`` or ``(train, val, test)`` (``None`` for a missing split),
- a dict ``{"train": ..., "val": ..., "test": ...}``.

Each must be a map-style ``torch.utils.data.Dataset`` (``__len__`` and ``__getitem__``).
Samples are ``(x, y)`` tuples, which the built-in step handles like any other data (the
model's input and output shapes are checked, the task is inferred from ``y``), or dicts
(several inputs, several targets), which the model's own ``training_step`` consumes.
Batches come from a torch DataLoader with ``data.num_workers`` workers and
``data.collate_fn`` (a class_path; torch's default collates tuples and dicts of tensors).
The sample order is a pure function of (seed, epoch), so a resumed run continues exactly,
and under DDP each rank gets its shard (``data.loaders``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from bptrain.class_path import describe, instantiate, resolve
from bptrain.data.bundle import DataBundle, DataSpec
from bptrain.data.loaders import DataLoaderBatches, dataloader_batches
from bptrain.errors import UserError

SPLITS = ("train", "val", "test")
KEY = "data.class_path"


def load_splits(cfg: Any) -> dict[str, Dataset | None]:
    """Call the factory and sort what it returned into train / val / test."""
    factory = resolve(cfg.class_path, KEY, what="a Dataset class or a function returning Datasets")
    returned = instantiate(factory, KEY, cfg.class_path, cfg.init_args)
    if isinstance(returned, Dataset):
        splits: dict[str, Any] = {"train": returned}
    elif isinstance(returned, Mapping):
        unknown = sorted(set(map(str, returned)) - set(SPLITS))
        if unknown or "train" not in returned:
            raise UserError(
                f"{KEY} '{cfg.class_path}' returned a dict with keys {sorted(map(str, returned))}; "
                "it needs 'train' and may have 'val' and 'test', nothing else."
            )
        splits = dict(returned)
    elif (
        isinstance(returned, Sequence) and not isinstance(returned, str) and 1 <= len(returned) <= 3
    ):
        splits = dict(zip(SPLITS, returned, strict=False))
    else:
        raise UserError(
            f"{KEY} '{cfg.class_path}' returned {describe(returned)}; it must return a Dataset, "
            "a tuple (train, val[, test]) or a dict {'train': ..., 'val': ..., 'test': ...} of Datasets."
        )
    for name in SPLITS:
        dataset = splits.setdefault(name, None)
        if dataset is None:
            continue
        if isinstance(dataset, IterableDataset) or not isinstance(dataset, Dataset):
            kind = (
                "an IterableDataset" if isinstance(dataset, IterableDataset) else describe(dataset)
            )
            raise UserError(
                f"{KEY} '{cfg.class_path}': the {name} split is {kind}; bptrain needs map-style "
                "torch.utils.data.Dataset objects (with __len__ and __getitem__) so that the order "
                "is a pure function of (seed, epoch) and resume is exact."
            )
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise UserError(f"{KEY} '{cfg.class_path}': the {name} split is empty.")
    return splits


def build_user_data(cfg: Any, seed: int, device: torch.device, rank: int, world_size: int):
    """A ``DataBundle`` (see ``bptrain.data``) over the user's datasets."""
    splits = load_splits(cfg)
    collate = None
    if cfg.collate_fn is not None:
        collate = resolve(
            cfg.collate_fn, "data.collate_fn", what="a function collating a list of samples"
        )
    spec = infer_spec(splits["train"], cfg)

    def batches(dataset: Dataset | None, training: bool) -> DataLoaderBatches | None:
        if dataset is None:
            return None
        return dataloader_batches(
            dataset, cfg, training, seed, device, rank, world_size, collate_fn=collate
        )

    return DataBundle(
        batches(splits["train"], True),  # type: ignore[arg-type]
        batches(splits["val"], False),
        batches(splits["test"], False),
        spec,
    )


def infer_spec(train: Dataset, cfg: Any):
    """What the model and loss need, from the first training sample (and the labels, for classes).

    Dict samples tell nothing bptrain can use (the model's ``training_step`` reads them), so
    their spec only carries the number of classes for the metrics (``data.num_classes``, or the
    dataset's ``num_classes`` / ``classes``).
    """
    sample = train[0]
    if isinstance(sample, Mapping):
        classes = cfg.num_classes or _declared_classes(train)
        task = "classification" if classes else None
        return DataSpec(task, (), classes, (), dict_samples=True)  # type: ignore[arg-type]
    if not (isinstance(sample, Sequence) and len(sample) == 2):
        raise UserError(
            f"{KEY} '{cfg.class_path}': a training sample is {describe(sample)}; samples must be "
            "(x, y) tuples or dicts of tensors."
        )
    x, y = (
        torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in sample
    )
    integer = not (y.is_floating_point() or y.is_complex())
    if not integer:
        return DataSpec("regression", tuple(x.shape), None, tuple(y.shape) or (1,))
    num_classes = cfg.num_classes or _declared_classes(train) or _count_classes(train)
    per_step = () if y.ndim == 0 or (y.ndim == 1 and len(y) == 1) else tuple(y.shape)
    return DataSpec("classification", tuple(x.shape), num_classes, per_step)


def _declared_classes(dataset: Dataset) -> int | None:
    """``num_classes`` or ``len(classes)`` (torchvision's convention) when the dataset says."""
    if isinstance(getattr(dataset, "num_classes", None), int):
        return dataset.num_classes  # type: ignore[attr-defined]
    classes = getattr(dataset, "classes", None)
    return len(classes) if isinstance(classes, Sequence) else None


def _count_classes(dataset: Dataset) -> int:
    """Max label + 1 over the training set: reads every sample, so large datasets should say
    ``data.num_classes`` (or carry ``num_classes``) instead."""
    top = -1
    for i in range(len(dataset)):  # type: ignore[arg-type]
        label = torch.as_tensor(dataset[i][1])
        top = max(top, int(label.max()))
    return top + 1
