"""Section ``data``: serving in-memory batches, bptrain's ``TensorBatches`` against
``DataLoader(TensorDataset)``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import Row, Settings, alternate, median


def data_path(settings: Settings) -> list[Row]:
    """Serving in-memory batches: bptrain's TensorBatches vs DataLoader(TensorDataset)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from bptrain.data.loaders import DataLoaderBatches, TensorBatches

    x, y = torch.randn(16_000, 40), torch.randint(0, 10, (16_000,))
    common = dict(
        batch_size=64, shuffle=True, drop_last=False, seed=0, rank=0, world_size=1, even_shards=True
    )
    loaders = {
        "tensor": TensorBatches(x, y, **common),
        "dataloader": DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True),
        "bptrain_dataloader": DataLoaderBatches(
            TensorDataset(x, y), num_workers=0, pin_memory=False, **common
        ),
    }

    def timer(loader: Any) -> Callable[[int], float]:
        def run(rep: int) -> float:
            start, batches = time.perf_counter(), 0
            for _ in loader:
                batches += 1
            return (time.perf_counter() - start) / batches * 1e6

        return run

    runs = alternate(settings.pick(7, 3), {k: timer(v) for k, v in loaders.items()})
    tensor, dl, bdl = (median(runs[k]) for k in ("tensor", "dataloader", "bptrain_dataloader"))
    return [
        Row(
            "data", "TensorBatches vs DataLoader(TensorDataset), per batch of 64", tensor, dl, "us"
        ),
        Row(
            "data",
            "data.loader=dataloader (num_workers=0) vs DataLoader",
            bdl,
            dl,
            "us",
            note="same DataLoader plus the seeded per-epoch order",
        ),
    ]
