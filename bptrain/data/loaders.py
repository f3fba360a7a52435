"""Batch iterators whose order is a pure function of (seed, epoch).

``TensorBatches`` serves in-memory data by indexing whole batches out of two
tensors (already on the training device when they fit): no per-sample
``__getitem__``, no collate, which is where small-model training loses most of
its time with a DataLoader. ``DataLoaderBatches`` wraps a torch DataLoader with
workers and pinned memory for data that benefits from them.

Both shard across ranks for distributed training: training shards are cut to
equal length (every rank must take the same number of steps), evaluation shards
are disjoint and complete so metrics summed over ranks count every sample once.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

Batch = tuple[torch.Tensor, torch.Tensor]


class Batches(Protocol):
    """What the training loop needs from a loader."""

    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...
    @property
    def num_samples(self) -> int: ...


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of one epoch: identical whenever (seed, epoch) are, which makes resume exact."""
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class _Sharded:
    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        rank: int,
        world_size: int,
        even_shards: bool,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.even_shards = (
            seed,
            rank,
            world_size,
            even_shards,
        )
        self.epoch = 0
        self._fingerprint: tuple[int, int] | None = (
            None  # (epoch, crc32): one permutation per epoch
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order_fingerprint(self, epoch: int) -> int:
        """crc32 of this rank's sample order in `epoch`: a checkpoint records it, a resume compares it."""
        if self._fingerprint is None or self._fingerprint[0] != epoch:
            current, self.epoch = self.epoch, epoch
            try:
                crc = zlib.crc32(self._indices().to(torch.int64).cpu().numpy().tobytes())
            finally:
                self.epoch = current
            self._fingerprint = (epoch, crc)
        return self._fingerprint[1]

    def _indices(self) -> torch.Tensor:
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle)
        if self.world_size > 1:
            if self.even_shards:  # drop the remainder rather than pad: padding would repeat samples
                order = order[: self.n - self.n % self.world_size]
            order = order[self.rank :: self.world_size]
        return order

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        if self.world_size == 1:
            shard = self.n
        elif self.even_shards:
            shard = self.n // self.world_size
        else:
            shard = len(range(self.rank, self.n, self.world_size))
        return shard - shard % self.batch_size if self.drop_last else shard

    def __len__(self) -> int:
        shard = self.num_samples
        return shard // self.batch_size if self.drop_last else math.ceil(shard / self.batch_size)


class TensorBatches(_Sharded):
    """Batches sliced from in-memory tensors; indexing happens on the tensors' device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, **kwargs: object) -> None:
        super().__init__(len(x), **kwargs)  # type: ignore[arg-type]
        self.x, self.y = x, y

    def __iter__(self) -> Iterator[Batch]:
        order = self._indices()
        contiguous = not self.shuffle and self.world_size == 1
        if not contiguous:
            order = order.to(self.x.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            if contiguous:  # a view, no copy
                yield (
                    self.x[start : start + self.batch_size],
                    self.y[start : start + self.batch_size],
                )
            else:
                index = order[start : start + self.batch_size]
                yield self.x.index_select(0, index), self.y.index_select(0, index)


class DataLoaderBatches(_Sharded):
    """A torch DataLoader (workers, pinned memory) over the same per-epoch order.

    Takes any map-style dataset: (x, y) pairs of in-memory tensors (``TensorDataset``), samples
    decoded on the fly (image folders), or a user's dataset of tuples or dicts (``data.class_path``)
    with its own ``collate_fn``.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_workers: int,
        pin_memory: bool,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(len(dataset), **kwargs)  # type: ignore[arg-type]
        self.dataset = dataset
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.collate_fn = collate_fn  # None: torch's default (tuples and dicts of tensors)

    def __iter__(self) -> Iterator[Batch]:
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self._indices().tolist(),
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,  # workers see the dataset as it is when each epoch starts
            collate_fn=self.collate_fn,
            # the workers' seeds come from (seed, epoch), not from the global RNG: iterating
            # would otherwise draw from it, and a resumed run would draw at another point
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 1),
        )
        yield from loader


def split_arguments(
    cfg: Any, training: bool, seed: int, rank: int, world_size: int
) -> dict[str, Any]:
    """How one split is batched and sharded, from the ``data`` section: the same for every loader.

    Only training shuffles and drops the last short batch, and only training cuts equal shards
    (every rank must take the same number of steps); evaluation shards stay complete.
    """
    return {
        "batch_size": cfg.batch_size,
        "shuffle": training and cfg.shuffle,
        "drop_last": training and cfg.drop_last,
        "seed": seed,
        "rank": rank,
        "world_size": world_size,
        "even_shards": training,
    }


def dataloader_batches(
    dataset: Dataset,
    cfg: Any,
    training: bool,
    seed: int,
    device: torch.device,
    rank: int,
    world_size: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    kind: type[DataLoaderBatches] = DataLoaderBatches,
) -> DataLoaderBatches:
    """``kind`` (a ``DataLoaderBatches``) over one split: ``data.num_workers`` workers, memory
    pinned when batches go to a GPU, batching and sharding as ``split_arguments`` says."""
    return kind(
        dataset,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_fn,
        **split_arguments(cfg, training, seed, rank, world_size),
    )
