"""One rank of a two-process gloo group that calls ``shards.write_shards`` directly (tests/test_shards.py).

Cheaper than a whole ``fit --nproc 2``: a tiny FSDP model, a few writes, each failure injected
on one rank only. Every rank writes what it saw to ``<directory>/result-<rank>.json``.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint import filesystem


def _attempt(write: Any) -> dict[str, str]:
    try:
        return {"ok": write()}
    except BaseException as err:  # what escapes write_shards, whatever it is
        return {"error": type(err).__name__, "message": str(err)}


def _failing_write_data(self: Any, plan: Any, planner: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


def main(directory: Path) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    from bptrain import shards
    from bptrain.sharding import shard

    torch.manual_seed(0)
    model = shard(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), "32")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)

    def train_step() -> None:
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    def write(step: int) -> Any:
        return lambda: shards.write_shards(model, optimizer, directory, step)

    train_step()
    result: dict[str, Any] = {"first": _attempt(write(5))}
    train_step()  # other weights, written again at the same step (a resumed run does this)
    result["again"] = _attempt(write(5))
    if rank == 1:  # a full disk on rank 1 alone, inside DCP
        original = filesystem.FileSystemWriter.write_data
        filesystem.FileSystemWriter.write_data = _failing_write_data  # type: ignore[method-assign]
    result["write_fails"] = _attempt(write(6))
    if rank == 1:
        filesystem.FileSystemWriter.write_data = original  # type: ignore[method-assign]
    replace = os.replace
    if rank == 0:  # rank 0 cannot rename the finished directory into place

        def failing_replace(src: Any, dst: Any) -> None:
            if str(dst).endswith(shards.SUFFIX):
                raise PermissionError(errno.EACCES, "Permission denied", str(dst))
            replace(src, dst)

        os.replace = failing_replace  # type: ignore[assignment]
    result["rename_fails"] = _attempt(write(7))
    os.replace = replace
    result["after"] = _attempt(write(8))  # the process group still works
    (directory / f"result-{rank}.json").write_text(json.dumps(result))
    dist.barrier()  # neither rank leaves while the other still uses the group
    # skip the interpreter's teardown: gloo's threads can abort it ("terminate called without
    # an active exception") once the results are on disk, which would only make the test flaky
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
