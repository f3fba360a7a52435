"""Sharded checkpoint files: every rank writes its own shard with Distributed Checkpoint (DCP).

A sharded checkpoint (``trainer.checkpoint.format: sharded``, the default under
``strategy: fsdp``) is two things in ``<run>/checkpoints/``:

* a shard directory ``step-000000120-1a2b3c.dcp/`` (the step, then a random token: each write
  has its own) written by every rank at once with
  ``torch.distributed.checkpoint.save``: the model's and the optimizer's state, each rank
  writing only the slices it owns (``__<rank>_0.distcp``) and rank 0 the index
  (``.metadata``); nobody gathers the full state;
* the small ``last.pt`` (``best.pt``, top-k files) that rank 0 writes as always: every other
  part of the run (loop state, RNG, data order, tracker, ...) plus ``shards``, the name of
  the directory holding its model and optimizer.

Atomic as ``last.pt`` is: the ranks write into ``.step-…-<token>.dcp.tmp/``, wait for each other,
and rank 0 renames the complete directory into place; only then is ``last.pt`` replaced
to point at it, and only after that are directories no checkpoint file names any more
deleted (``prune``). A kill at any moment leaves the previous ``last.pt`` and the
directory it names.

Reading never runs code from the files: the ``.metadata`` index is unpickled with an
allow-list of DCP's own metadata classes (``SafeReader``), and non-tensor values (the
optimizer's hyper-parameters) with ``torch.load(weights_only=True)`` (``_SafePlanner``),
where DCP itself would use plain ``pickle``. A damaged or incomplete directory is a clear
``UserError``. Every command that reads ``last.pt`` (eval, predict, export,
``model.init_from``, grad-inspect) gets the full weights through ``read_shards``, in one
process, whatever the number of processes that wrote them (see docs/checkpointing.md).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import secrets
import shutil
import types
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, filesystem, metadata
from torch.distributed.checkpoint._nested_dict import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    _EmptyStateDictLoadPlanner,
)
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from bptrain.durable import fsync_dir
from bptrain.errors import TrainingError, UserError

SUFFIX = ".dcp"
_NAME = re.compile(r"step-(\d+)(?:-[0-9a-f]+)?" + re.escape(SUFFIX))


def shard_dir_name(step: int, token: str | None = None) -> str:
    """``step-000000120-1a2b3c.dcp``: the step first, so that names sort by step, and a random
    token per write, so that a resumed run that reaches a step an earlier run (or the run before
    a ``--resume best.pt``) also wrote never mistakes that directory for its own."""
    return f"step-{step:09d}-{token or secrets.token_hex(3)}{SUFFIX}"


def shard_step(name: str) -> int | None:
    """The step of a shard directory's name (with or without a token), None for other names."""
    found = _NAME.fullmatch(name)
    return int(found.group(1)) if found else None


# --------------------------------------------------------------------------- writing (collective)


def write_shards(
    model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path, step: int
) -> str:
    """Every rank writes its shard of the model and optimizer state; returns the directory's name.

    A collective: every rank calls it at the same step. Written to ``.<name>.tmp`` first; after
    all ranks finished, rank 0 renames it into place, so the name exists only once complete.
    Each phase ends with the ranks agreeing on its outcome, so that a failure on any one rank
    (a full disk, a refused rename) is the same one-line ``TrainingError`` on every rank instead
    of a traceback on one and a hang in the next collective on the others.
    """
    rank = dist.get_rank()
    names: list[str | None] = [shard_dir_name(step) if rank == 0 else None]
    dist.broadcast_object_list(names, src=0)  # every rank writes into the same directory
    name = str(names[0])
    final, tmp = directory / name, directory / f".{name}.tmp"
    _agree(_attempt(lambda: _prepare(directory, tmp)) if rank == 0 else None, step, tmp)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    failure = _attempt(
        lambda: dcp.save(
            {"model": model_state, "optimizer": optimizer_state},
            storage_writer=dcp.FileSystemWriter(tmp, sync_files=True),
        )
    )
    _agree(failure, step, tmp)  # every rank's shard (and rank 0's index) is on disk
    _agree(_attempt(lambda: _publish(directory, tmp, final)) if rank == 0 else None, step, tmp)
    return name


def _prepare(directory: Path, tmp: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)  # a write a kill interrupted


def _publish(directory: Path, tmp: Path, final: Path) -> None:
    """Rank 0: the complete directory under its final name (a fresh name: nothing to replace)."""
    os.replace(tmp, final)
    fsync_dir(directory)


def _attempt(action: Any) -> tuple[int, str] | None:
    """Run this rank's part of a phase; the rank that failed and why (one line), or None.

    DCP reports a rank's failure as a ``CheckpointException`` (on every rank), a BaseException
    that ``except Exception`` would let through; its per-rank causes are unwrapped here."""
    try:
        action()
    except (Exception, CheckpointException) as err:
        failures = getattr(err, "failures", None)
        ranks = sorted(failures) if isinstance(failures, dict) and failures else []
        return (ranks[0] if ranks else dist.get_rank()), _reason(err)
    return None


def _agree(failure: tuple[int, str] | None, step: int, tmp: Path) -> None:
    """A collective: raise the first rank's failure, if any rank had one, on every rank; rank 0
    removes the half-written directory. ``last.pt`` and the directory it names are untouched."""
    seen: list[tuple[int, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, failure)  # here, not bptrain.distributed: it imports sharding
    failed = [found for found in seen if found is not None]
    if not failed:
        return
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    rank, reason = min(failed)
    where = f" on rank {rank}" if len(seen) > 1 else ""
    raise TrainingError(
        f"could not write the shards of step {step} to {tmp}{where}: {reason}. "
        "The previous checkpoint is intact (checkpoints/last.pt and the directory it names)."
    )


def load_shards_into(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Every rank reads its own slices of a sharded checkpoint, on any number of ranks (DCP reshards)."""
    check_complete(path)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    try:
        dcp.load(state, storage_reader=SafeReader(path), planner=_SafePlanner())
    except UserError:
        raise
    except (Exception, CheckpointException) as err:  # DCP's failures (a BaseException) per rank
        raise _as_user_error(path, err) from None
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
    )


# --------------------------------------------------------------------------- reading (one process)


def read_shards(path: Path, keys: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """The full (unsharded) ``keys`` of a sharded checkpoint, read in this one process.

    ``{"model": {name: tensor}, "optimizer": {"state": ..., "param_groups": ...}}``; the
    optimizer is keyed by parameter names, as ``get_optimizer_state_dict`` writes it.
    """
    check_complete(path)
    state: dict[str, Any] = {}
    try:
        _load_state_dict(
            state,
            storage_reader=SafeReader(path),
            planner=_SafeEmptyPlanner(keys=set(keys)),
            no_dist=True,
        )
    except UserError:
        raise
    except (Exception, CheckpointException) as err:  # DCP's failures (a BaseException) per rank
        raise _as_user_error(path, err) from None
    missing = [key for key in keys if key not in state]
    if missing:
        raise UserError(
            f"{path} holds no {' or '.join(missing)} state: it is not a bptrain shard directory."
        )
    return state


def check_complete(path: Path) -> None:
    """Refuse, with what to do, a shard directory that is missing, whose write never finished,
    or whose index is damaged or names anything but DCP's metadata records."""
    if not path.is_dir():
        raise UserError(
            f"the shard directory {path} of this sharded checkpoint is missing. Copy a run's "
            "checkpoints/ folder whole (the .pt file and the step-*.dcp directory it names), "
            "or use another checkpoint of the run."
        )
    if not (path / ".metadata").is_file():
        raise UserError(
            f"{path} is incomplete (no .metadata: its write never finished). "
            "Use another checkpoint of the run (checkpoints/last.pt, best.pt or a top-k file)."
        )
    SafeReader(path).read_metadata()  # refuses a damaged or crafted index before DCP reads it


def _cause(err: BaseException) -> BaseException:
    """The first rank's own exception inside DCP's CheckpointException (a UserError stays one)."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))  # (exception, traceback summary)
        if isinstance(first, tuple) and first and isinstance(first[0], BaseException):
            return first[0]
    return err


def _reason(err: BaseException) -> str:
    """One line: what went wrong, from the first failing rank's own exception inside DCP's."""
    cause = _cause(err)
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return text[:300]


def _as_user_error(path: Path, err: BaseException) -> UserError:
    cause = _cause(err)
    return cause if isinstance(cause, UserError) else UserError(_damaged(path, cause))


def _damaged(path: Path, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"cannot read the sharded checkpoint {path}: its files are damaged or incomplete "
        f"({reason[:200]}). Use another checkpoint of the run (checkpoints/last.pt, best.pt "
        "or a top-k file), or copy the directory again from its source."
    )


def _dcp_classes() -> dict[tuple[str, str], Any]:
    """What a DCP ``.metadata`` index may name: DCP's own metadata records, paths, sizes, dtypes."""
    import collections
    import pathlib

    allowed: dict[tuple[str, str], Any] = {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): filesystem._StorageInfo,
        ("torch", "Size"): torch.Size,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,  # type: ignore[attr-defined]
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }
    for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"):
        allowed[("pathlib", name)] = getattr(pathlib, name)
        allowed[("pathlib._local", name)] = getattr(pathlib, name)
    for name, value in vars(metadata).items():
        if isinstance(value, type) and value.__module__ == metadata.__name__:
            allowed[(metadata.__name__, name)] = value
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype | torch.memory_format | torch.layout):
            allowed[("torch", name)] = value
    return allowed


# What a BUILD opcode must never target: it sets attributes with setattr or ``__dict__.update``,
# which on a class, function or module (all that find_class returns) would outlive the refusal.
_SHARED = (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)


class _MetadataUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Unpickles DCP's ``.metadata`` index, refusing any global that is not a metadata record,
    and any BUILD of an object that exists outside this file.

    The pure-Python unpickler, because its opcodes are a table (``dispatch``) that can be
    changed: the C one would let a crafted index BUILD an allowed class itself (e.g. set
    ``PurePosixPath.as_posix``), a change that stays for the whole process even though the
    file is then refused. The index is small: the speed does not matter."""

    allowed: ClassVar[dict[tuple[str, str], Any]] = {}
    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which is not a DCP metadata record"
            )
        return found

    def load_build(self) -> None:
        target = self.stack[-2]  # below the state that BUILD applies to it
        shared = isinstance(target, _SHARED) or any(
            target is value for value in _allowed().values()
        )
        if shared:
            raise pickle.UnpicklingError(
                f"it sets attributes of {getattr(target, '__qualname__', type(target).__name__)} "
                "itself, which a DCP metadata record never does"
            )
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def _allowed() -> dict[tuple[str, str], Any]:
    if not _MetadataUnpickler.allowed:
        _MetadataUnpickler.allowed = _dcp_classes()
    return _MetadataUnpickler.allowed


class SafeReader(FileSystemReader):
    """DCP's file reader, except that the ``.metadata`` index is unpickled with an allow-list."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = Path(self.path) / ".metadata"
        try:
            found = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        except pickle.UnpicklingError as err:
            if "DCP metadata record" not in str(err):
                raise UserError(_damaged(Path(self.path), err)) from None
            raise UserError(
                f"refusing to read {path}: {err}. bptrain reads a shard index only when it "
                "names DCP's own metadata records, so a file cannot run code."
            ) from None
        except Exception as err:  # truncated, garbage
            raise UserError(_damaged(Path(self.path), err)) from None
        if not isinstance(found, metadata.Metadata):
            raise UserError(_damaged(Path(self.path), TypeError(type(found).__name__)))
        if getattr(found, "storage_meta", None) is None:
            found.storage_meta = metadata.StorageMeta()
        found.storage_meta.load_id = self.load_id
        return found


def _safe_load_bytes(planner: Any, read_item: Any, value: io.BytesIO) -> None:
    """DCP's ``load_bytes`` with ``torch.load(weights_only=True)`` (DCP's own unpickles fully)."""
    try:
        loaded = torch.load(value, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refusing a value in the shards ({read_item.dest_index.fqn}): it is not plain data "
            f"({str(err).strip().splitlines()[0][:200]})"
        ) from None
    if planner.flatten_state_dict:
        set_element(planner.original_state_dict, planner.mappings[read_item.dest_index.fqn], loaded)
    else:
        planner.state_dict[read_item.dest_index.fqn] = loaded


class _SafePlanner(DefaultLoadPlanner):
    load_bytes = _safe_load_bytes


class _SafeEmptyPlanner(_EmptyStateDictLoadPlanner):
    load_bytes = _safe_load_bytes


# --------------------------------------------------------------------------- housekeeping


def prune(directory: Path, referenced: set[str], keep_from: str) -> list[Path]:
    """Delete the shard directories that no checkpoint file names any more, except `keep_from`
    and those of later steps (written since: their checkpoint file may still be on its way).

    Ordered by the step in the name, not by the name: another directory of `keep_from`'s own
    step is an earlier run's (each write has its own name) and goes when nothing names it."""
    removed = []
    newest = shard_step(keep_from)
    for path in sorted(directory.glob(f"step-*{SUFFIX}")):
        step = shard_step(path.name)
        if step is None or path.name in referenced or path.name == keep_from:
            continue
        if (newest is None or step <= newest) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
