"""Multi-process training on torch.distributed: the process group, rank helpers, all-reduces, DDP.

bptrain never starts or connects processes by itself. A launcher starts one process per device
and sets torch's standard variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
``torchrun``, ``bptrain fit --nproc N`` (which calls torch's own elastic launcher,
``torch.distributed.run``), or ``srun`` in the SLURM templates. ``setup`` reads those variables
and calls ``init_process_group`` (nccl on GPUs, gloo on CPU). Started as one plain process,
everything here is a no-op, so the single-process path pays nothing.

Rules the loop follows so that no rank is ever left waiting in a collective:

* every rank takes the same number of steps (training shards have equal length);
* decisions (stop on a signal, early stopping, non-finite loss) are made on values that are
  identical on all ranks: all-reduced metrics, or a flag all-reduced at a step boundary;
* only rank 0 writes files (run directory, logs, checkpoints); the others read the same paths.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bptrain.errors import UserError
from bptrain.runtime import resolve_device

T = TypeVar("T")

# Signals torch's elastic agent (torchrun, `--nproc`) passes on to its workers. Its default
# (TERM, INT, HUP, QUIT) lacks USR1, SLURM's usual time-limit warning: without it a USR1 sent to
# the launcher would kill the launcher and orphan the workers instead of letting them save.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


@dataclass(frozen=True)
class Dist:
    """Who this process is in the job; world_size 1 means a plain single process."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def describe(self, batch_size: int, accumulate: int) -> str:
        """One line for the run header: how big a step really is (batch sizes are per process)."""
        per_step = batch_size * accumulate * self.world_size
        if not self.enabled:
            return f"single process | {per_step} samples per optimizer step"
        return (
            f"DDP: {self.world_size} processes ({self.backend}) | batch_size {batch_size} per process"
            f" x {self.world_size} processes x {accumulate} accumulated = {per_step} samples per"
            " optimizer step; the data sizes above are per process; the learning rate is not rescaled"
        )

    def summary(self, batch_size: int, accumulate: int) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "batch_size_per_process": batch_size,
            "global_batch_size": batch_size * accumulate * self.world_size,
        }


def launched_world_size() -> int | None:
    """WORLD_SIZE as set by a launcher, or None when this is a plain process."""
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value else None


def setup(device_name: str, strategy: str = "auto") -> Dist:
    """Join the process group the launcher prepared (if any) and pick this rank's device.

    ``strategy: auto`` runs DDP when launched with more than one process; ``ddp`` also wraps a
    one-process launch (torchrun --nproc_per_node=1) and refuses a plain, unlaunched process.
    The process group stays up until ``teardown`` (the CLI calls it when ``fit`` returns).
    """
    world_size = launched_world_size()
    if world_size is None:
        if strategy in ("ddp", "fsdp"):
            raise UserError(
                f"trainer.strategy is {strategy} but this process was not started by a distributed launcher. "
                "Start it with `torchrun --nproc_per_node=N -m bptrain fit ...`, `bptrain fit ... --nproc N`, "
                "or srun (see docs/cluster.md); or set trainer.strategy=auto."
            )
        return Dist(device=resolve_device(device_name))
    if world_size == 1 and strategy == "auto":
        return Dist(device=resolve_device(device_name))
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise UserError(
            f"WORLD_SIZE={world_size} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: start bptrain with a "
            "launcher (torchrun, `bptrain fit --nproc N`, srun as in docs/cluster.md), or unset WORLD_SIZE."
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = _rank_device(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))
    return Dist(device, rank, local_rank, world_size, backend)


def _rank_device(device_name: str, local_rank: int) -> torch.device:
    """cuda:LOCAL_RANK (modulo the visible GPUs: one per process when SLURM binds them), or cpu."""
    if device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if device_name in ("auto", "cuda"):
        resolve_device("cuda")  # a clear error when there is no GPU
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    raise UserError(
        f"trainer.device is {device_name}, but under DDP each process picks its own device "
        "(cuda:LOCAL_RANK, or cpu). Set trainer.device to auto, cuda or cpu."
    )


def teardown(wait_for_all_ranks: bool = False) -> None:
    """Leave the process group; with `wait_for_all_ranks` (all ranks finished or stopped together),
    first wait for the others, so none exits while rank 0 still writes its checkpoint.

    The DDP wrapper and its gradient reducer are freed first, while the group and the interpreter
    are alive: left to interpreter shutdown, gloo's threads can abort the process (SIGABRT).
    """
    if not dist.is_initialized():
        return
    gc.unfreeze()  # `bptrain fit` froze set-up's objects, the DDP wrapper among them (collector.py)
    gc.collect()
    if wait_for_all_ranks:
        dist.barrier()
    dist.destroy_process_group()


def wrap(
    model: nn.Module,
    ctx: Dist,
    strategy: str = "auto",
    precision: str = "32",
    fsdp_blocks: list[str] | tuple[str, ...] = (),
) -> nn.Module:
    """DistributedDataParallel around the model when distributed; the model itself otherwise.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts from
    the same weights, and averages gradients across ranks during backward. ``strategy: fsdp``
    shards the model in place instead (``sharding.py``); build the optimizer after this call.
    """
    if not ctx.enabled:
        return model
    if strategy == "fsdp":
        # imported here: only FSDP runs pay for loading torch.distributed.fsdp
        from bptrain.sharding import shard

        return shard(model, precision, fsdp_blocks)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """Inside: backward accumulates local gradients without the all-reduce (non-final micro-batches).

    The final micro-batch of a window runs outside it, and its backward all-reduces the gradients
    accumulated over the whole window: one communication per optimizer step instead of one per
    micro-batch, with the same result.
    """
    module = getattr(model, "_orig_mod", model)  # under torch.compile
    if skip and isinstance(module, DistributedDataParallel):
        return module.no_sync()
    if skip and hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        from bptrain.sharding import no_gradient_sync

        return no_gradient_sync(module)
    return contextlib.nullcontext()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (a copy); the tensor itself when not distributed."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average of a per-rank value; equal-sized shards make it the mean over all samples."""
    if not dist.is_initialized():
        return value
    return all_reduce_sum(value.detach().float()) / dist.get_world_size()


def sum_over_ranks(*values: float) -> list[float]:
    """Python numbers summed over ranks, in float64 (sample counts stay exact below 2**53)."""
    if not dist.is_initialized():
        return list(values)
    device = _collective_device()
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def agree_on_signal(signum: int | None) -> int | None:
    """The stop signal any rank received, the same on all ranks (one small all-reduce).

    Called at every optimizer-step boundary (through ``faults.NonFiniteGuard.agreed_signal``,
    which agrees the non-finite verdict in the same all-reduce), so all ranks stop after the
    same step even when the signal reached only some of them.
    """
    return agree_at_step(False, signum)[1]


def agree_at_step(failed: bool | torch.Tensor, signum: int | None) -> tuple[bool, int | None]:
    """Whether any rank's non-finite check failed, and the stop signal any rank received: the
    same on every rank, in one small all-reduce (the per-step one `agree_on_signal` does alone).

    `failed` may be a device-side flag (the lazy GPU check): it is read here, with the signal,
    in the one host sync this all-reduce costs anyway.
    """
    if not dist.is_initialized():
        return bool(failed), signum
    device = _collective_device()
    flags = torch.stack(
        [
            torch.as_tensor(failed, device=device).to(torch.int64).reshape(()),
            torch.tensor(signum or 0, dtype=torch.int64, device=device),
        ]
    )
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    any_failed, agreed = flags.tolist()
    return bool(any_failed), agreed or None


def all_gather_objects(value: T) -> list[T]:
    """Every rank's value (any picklable object), in rank order; [value] when not distributed.
    A collective: only where every rank is (e.g. a failure every rank agreed on)."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (one small all-reduce).

    For decisions taken from per-rank values, e.g. "this step's loss is not finite": every rank
    must take the same branch, or one is left waiting in a collective the others skipped.
    """
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast(value: T) -> T:
    """Rank 0's value on every rank (any picklable object): paths the ranks must agree on."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each training forward, so after the last one the ranks'
    buffers differ by one update; evaluating with rank 0's makes the distributed metrics those
    of the checkpoint rank 0 saves.
    """
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class NullLog:
    """What ranks other than 0 log to: nothing (rank 0 writes metrics.jsonl and TensorBoard)."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self, summary: Any = None) -> None:
        pass

    def layers(self, *args: Any, **kwargs: Any) -> None:
        pass

    def histograms(self, *args: Any, **kwargs: Any) -> None:
        pass


# --------------------------------------------------------------------------- `fit --nproc`


def launch(nproc: int, bptrain_args: list[str]) -> int:
    """Run ``python -m bptrain <bptrain_args>`` in ``nproc`` processes on this machine.

    Exactly ``torchrun --standalone --nproc_per_node=N -m bptrain ...``, through torch's elastic
    launcher, plus two things torchrun lacks: USR1 is forwarded to the workers (SLURM's warning
    signal), and the exit code is the workers' (2 for a bad config, 128+N when stopped by signal
    N after saving) rather than torchrun's 1 for any failure.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, parse_args
    from torch.distributed.run import run as torchrun

    options = ["--standalone", f"--nproc_per_node={nproc}"]
    if "--signals-to-handle" in get_args_parser()._option_string_actions:
        options.append(f"--signals-to-handle={FORWARDED_SIGNALS}")
    else:  # older torch reads the environment variable instead
        os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = FORWARDED_SIGNALS
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = parse_args([*options, "-m", "bptrain", *bptrain_args])
    try:
        torchrun(args)
    except ChildFailedError as err:
        # Once one worker exits, the agent SIGTERMs the rest: a worker killed by a signal is
        # usually that collateral, so the code of a worker that exited by itself comes first.
        failures = sorted(err.failures.values(), key=lambda failure: failure.timestamp)
        exited = [failure.exitcode for failure in failures if failure.exitcode > 0]
        return exited[0] if exited else 128 - failures[0].exitcode
    except SignalException as err:  # the launcher was signalled; the workers got it too and saved
        return 128 + int(err.sigval)
    return 0
