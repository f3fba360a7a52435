"""Checkpoint files: atomic writes, weights-only reads, best/top-k ranking, safetensors export.

Saving writes to a temporary file in the same directory, flushes and fsyncs it,
then renames it over the target (atomic on POSIX) and fsyncs the directory: a
kill at any moment leaves either the old file or the new one, never half of one.
A write that fails (full disk, read-only directory) raises a TrainingError saying
the previous file is intact.

Loading uses ``torch.load(weights_only=True)`` and nothing else: only tensors and
plain Python containers are unpickled, so a crafted file cannot run code.

What a checkpoint holds is defined in ``run_state.py`` (``RunState``);
``CheckpointTracker`` decides which validations become best.pt and top-k files.
See docs/checkpointing.md.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from bptrain.durable import fsync_dir
from bptrain.errors import TrainingError, UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically write `state` to `path` (torch format, loadable with weights_only=True)."""
    _atomic_write(path, lambda handle: torch.save(state, handle))


class BackgroundWriter:
    """Writes checkpoints on one background thread, in order, so the step loop does not wait on the disk.

    ``submit`` takes a state already copied to host memory (``host_copy``): the loop keeps training
    and changing its tensors in place while the copy is written. A failed write (full disk) raises
    its TrainingError at the next ``submit`` or at ``close``, which waits for every write.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bptrain-checkpoint")
        self._pending: list[Any] = []

    def submit(self, write: Any, *args: Any) -> None:
        """Queue ``write(*args)`` (``save_checkpoint(state, path)``, a link, a removal) behind the
        writes already queued."""
        self._raise_failures(wait=False)
        self._pending.append(self._pool.submit(write, *args))

    def wait(self) -> None:
        """Wait for the writes queued so far (a callback is about to read one of the files)."""
        self._raise_failures(wait=True)

    def busy(self) -> bool:
        """A write is queued or under way (a signal arriving now must not force a stop)."""
        return any(not f.done() for f in self._pending)

    def close(self) -> None:
        """Wait for every write (the run's exit must not lose the last one), then stop the thread."""
        try:
            self._raise_failures(wait=True)
        finally:
            self._pool.shutdown(wait=True)

    def _raise_failures(self, wait: bool) -> None:
        """Collect finished writes (all of them, waiting, with `wait`); the first failure is raised.
        A write stays pending until it has finished: `busy` must see it while close waits."""
        while self._pending and (wait or self._pending[0].done()):
            self._pending[0].result()  # waits; raises the write's TrainingError
            self._pending.pop(0)


def host_copy(value: Any) -> Any:
    """A copy of a checkpoint's contents whose tensors live in host memory and share nothing with the run."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: host_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(host_copy(v) for v in value)
    return value


def save_safetensors(
    weights: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    """Atomically write model weights as .safetensors: tensors only, safe to share and to load anywhere."""
    from safetensors.torch import save

    # Clones break storage sharing (tied weights), which safetensors refuses to serialise.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
    data = save(tensors, metadata=metadata)
    _atomic_write(path, lambda handle: handle.write(data))


def _atomic_write(path: Path, write: Any) -> None:
    """tmp file in the same directory -> write -> fsync -> os.replace -> fsync(dir).

    Any failure (full disk, read-only directory, a kill) leaves the previous file untouched;
    a kill mid-write can leave a stale ``.<name>.*.tmp`` (removed by ``remove_stale_tmp``).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise TrainingError(f"could not write {path}: {err}. {_intact(path)}") from err
    try:
        os.fchmod(
            fd, 0o666 & ~_UMASK
        )  # mkstemp creates 0600; a checkpoint gets the usual file mode
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        fsync_dir(path.parent)
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        hint = (
            " The disk is full: free space or set logging.run_dir elsewhere."
            if err.errno == errno.ENOSPC
            else ""
        )
        raise TrainingError(f"could not write {path}: {err}.{hint} {_intact(path)}") from err
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _intact(path: Path) -> str:
    return (
        f"The previous {path.name} is intact."
        if path.exists()
        else "No previous checkpoint was lost (none existed)."
    )


def remove_stale_tmp(directory: Path) -> list[Path]:
    """Delete temporary files (and shard directories, ``.step-*.dcp.tmp``) left by writes that a
    kill interrupted (never a finished checkpoint)."""
    import shutil

    stale = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for tmp in stale:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return stale


def link_or_copy(source: Path, target: Path) -> None:
    """Make `target` the same file as `source` atomically: a hard link (no extra disk), else a copy."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        _atomic_write(target, lambda handle: handle.write(source.read_bytes()))


def load_checkpoint(
    path: Path,
    map_location: str | torch.device = "cpu",
    shards: tuple[str, ...] = ("model",),
) -> dict[str, Any]:
    """Read a checkpoint written by bptrain (or any weights-only file); refuse anything that needs code to load.

    A sharded checkpoint (its ``shards`` entry names a shard directory beside the file) gets
    the full ``shards`` keys (``model``, ``optimizer``) read from that directory in this process,
    so every reader sees one complete dict; ``shards=()`` leaves them to the caller (an FSDP
    resume, where each rank reads its own slices) with ``shards["path"]`` resolved.
    """
    path = Path(path)
    state = _load_file(path, map_location)
    if state.get("shards") is not None:
        try:
            _resolve_shards(state, path, shards)
        except UserError:  # a live run may have moved on and pruned the directory: read again
            state = _load_file(path, map_location)
            _resolve_shards(state, path, shards)
    return state


def _resolve_shards(state: dict[str, Any], path: Path, keys: tuple[str, ...]) -> None:
    from bptrain.shards import read_shards  # imported here: only sharded checkpoints load DCP

    ref = state["shards"]
    name = ref.get("dir") if isinstance(ref, dict) else None
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise UserError(
            f"{path} names no valid shard directory (shards: {ref!r}); the file is damaged{_ADVICE}"
        )
    ref["path"] = str(path.parent / name)
    if keys:
        state.update(read_shards(path.parent / name, keys))


def _load_file(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read checkpoint {path}: {_DAMAGED['empty']}{_ADVICE}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if reason is None:  # not a forbidden object: bytes that are no pickle at all
            raise UserError(f"cannot read checkpoint {path}: {_damage(path)}") from None
        raise UserError(
            f"refusing to load {path}: it contains Python objects that are not plain weights "
            f"({reason}). bptrain reads checkpoints with torch.load(weights_only=True), "
            "so a file cannot run code, and never falls back to full unpickling. If the file comes from a "
            "source you trust, re-save its tensors as a plain state_dict or a .safetensors file."
        ) from None
    except Exception:  # torch raises anything from KeyError to OSError on garbage
        raise UserError(f"cannot read checkpoint {path}: {_damage(path)}") from None
    if not isinstance(state, dict):
        raise UserError(
            f"{path} is not a bptrain checkpoint (expected a dict, found {type(state).__name__})."
        )
    return state


_DAMAGED = {
    "empty": "the file is empty (0 bytes), so its write or copy never finished",
    "zip": "the file is truncated or damaged (torch.save writes a zip archive, and this one is incomplete)",
    "other": "the file is not a PyTorch checkpoint (torch.save writes a zip archive; this is neither that "
    "nor a pickle of tensors)",
}
_ADVICE = (
    ". Use another checkpoint of the run (checkpoints/last.pt, best.pt or a top-k file), "
    "or copy the file again from its source."
)


def _damage(path: Path) -> str:
    """Why a file that torch could not read is unreadable, from its first bytes."""
    with path.open("rb") as handle:
        head = handle.read(4)
    kind = "zip" if head.startswith(b"PK") else "other"
    return _DAMAGED[kind] + _ADVICE


def _unpickler_reason(err: Exception) -> str | None:
    """The informative part of torch's weights_only error, e.g. 'it names the Python global posix.system'.

    None when the unpickler did not meet a forbidden object but bytes it cannot parse (an
    unsupported opcode, a truncated stream): the file is damaged, not hostile.
    """
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it names the Python global {found.group(1).rstrip('.')}"
    if "WeightsUnpickler error:" not in text:
        return None
    reason = text.split("WeightsUnpickler error:", 1)[1].split("\n\n", 2)
    reason = " ".join(part.strip() for part in reason[:2] if part.strip())
    if not reason or re.match(r"(Unsupported operand|.*truncated|Ran out of input)", reason, re.I):
        return None
    return reason[:200]


def model_state(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint (key ``model``) or a bare state_dict."""
    if "model" in state and isinstance(state["model"], dict):
        return state["model"]
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise UserError(f"{path} has no model weights (no 'model' key and not a state_dict).")


class CheckpointTracker:
    """Ranks validations by `monitor` and keeps best.pt and the top-k files under checkpoints/.

    ``update`` is called with each epoch's metrics; it writes a checkpoint only when the
    monitored value is the best so far (best.pt) or makes the top k. best.pt is a hard
    link to the top-k file of the same checkpoint when there is one (no second copy).
    Its own state (best value/epoch, the top-k list) goes into every checkpoint, so a
    resumed run keeps ranking where it left off. A top-k file that vanished (a kill
    between writing and recording it) is simply forgotten.
    """

    def __init__(
        self,
        directory: Path,
        monitor: str,
        mode: str,
        save_top_k: int = 0,
        save_best: bool = True,
    ) -> None:
        self.directory, self.monitor, self.mode = Path(directory), monitor, mode
        self.save_top_k, self.save_best = save_top_k, save_best
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.best_metrics: dict[str, float] | None = None
        self.top_k: list[dict[str, Any]] = []  # {"value", "epoch", "step", "file"}, best first
        self.written: Path | None = None  # the file the last update wrote its state to

    def better(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        return value < reference if self.mode == "min" else value > reference

    def filename(self, epoch: int, step: int, value: float) -> str:
        metric = self.monitor.replace("/", "_")
        return f"epoch={epoch:03d}-step={step:06d}-{metric}={value:.6g}.pt"

    def update(
        self,
        metrics: dict[str, float],
        epoch: int,
        step: int,
        make_state: Any,
        export_best: Any = None,
        writer: BackgroundWriter | None = None,
    ) -> bool:
        """Rank this epoch's metrics; write what is due. Returns True when this is the new best.

        `make_state()` builds the checkpoint dict as it is to be written (called at most once,
        after the tracker's own state is updated so the files record it; with a `writer`, a copy
        in host memory: ``host_copy``); `export_best(path)` writes best.safetensors. With a
        `writer` (trainer.checkpoint.async_write) the files are written by its thread, in order,
        as last.pt is: the loop does not wait on the disk. ``written`` names the file this
        update wrote the state to (None if none), so that last.pt can link it (train.Run).
        """
        self.written = None
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            return (
                False  # not measured this epoch (e.g. no validation), or non-finite: never ranked
            )
        improved = self.better(value, self.best_value)
        if improved:
            self._record_best(value, epoch, step, metrics)
        entry, evicted = self._rank(value, epoch, step)
        if entry is None and not (improved and self.save_best):
            return improved  # nothing to write
        state = make_state()  # after the bookkeeping above, so the files record it
        do = _now if writer is None else writer.submit
        if entry is not None:
            self.written = self.directory / entry["file"]
            do(save_checkpoint, state, self.written)
        if improved and self.save_best:
            if entry is not None:
                do(link_or_copy, self.directory / entry["file"], self.directory / "best.pt")
            else:
                self.written = self.directory / "best.pt"
                do(save_checkpoint, state, self.written)
            if export_best is not None:
                export_best(self.directory / "best.safetensors")
        for old in evicted:
            do(_remove, self.directory / old["file"])
        return improved

    def _rank(self, value: float, epoch: int, step: int) -> tuple[dict | None, list[dict]]:
        """Insert into the top-k list if it belongs there: (the new entry or None, the evicted entries)."""
        if self.save_top_k == 0:
            return None, []
        full = self.save_top_k != -1 and len(self.top_k) >= self.save_top_k
        if full and not self.better(value, self.top_k[-1]["value"]):
            return None, []
        entry = {"value": value, "epoch": epoch, "step": step}
        entry["file"] = self.filename(epoch, step, value)
        ranked = sorted([*self.top_k, entry], key=lambda e: e["value"], reverse=self.mode == "max")
        limit = len(ranked) if self.save_top_k == -1 else self.save_top_k
        self.top_k = ranked[:limit]
        return entry, ranked[limit:]

    def _record_best(self, value: float, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.best_value, self.best_epoch, self.best_step = value, epoch, step
        self.best_metrics = {k: v for k, v in metrics.items() if k.startswith(("val/", "train/"))}

    def summary(self) -> dict[str, Any] | None:
        """summary.json's ``best``: the epoch, the monitor and the metrics of the best validation."""
        if self.best_epoch is None:
            return None
        return {
            "epoch": self.best_epoch,
            "step": self.best_step,
            "monitor": self.monitor,
            "mode": self.mode,
            "value": self.best_value,
            **(self.best_metrics or {}),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "best_metrics": self.best_metrics,
            "top_k": [dict(e) for e in self.top_k],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state.get("monitor"), state.get("mode")) != (self.monitor, self.mode):
            return  # the ranking criterion changed with the config: start ranking afresh
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.best_step, self.best_metrics = state["best_step"], state["best_metrics"]
        self.top_k = [e for e in state["top_k"] if (self.directory / e["file"]).is_file()]


def _now(write: Any, *args: Any) -> None:
    write(*args)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def rewind_run_dir(run_dir: Path, metrics_bytes: int | None) -> None:
    """Before resuming in `run_dir`: drop stale temporary files and the metric lines logged after the checkpoint.

    A run killed after its last save logged steps that the resumed run will train (and log)
    again; cutting metrics.jsonl back to its length at save time keeps one line per step.
    """
    remove_stale_tmp(run_dir / "checkpoints")
    metrics = run_dir / "metrics.jsonl"
    if metrics_bytes is not None and metrics.is_file() and metrics.stat().st_size > metrics_bytes:
        with metrics.open("r+b") as handle:
            handle.truncate(metrics_bytes)
