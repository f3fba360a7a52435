"""Resuming a run: finding the checkpoint ``--resume`` names, and refusing one this config cannot continue.

What a checkpoint holds and how it is restored is ``run_state.py``'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bptrain import distributed
from bptrain.checkpoint import load_checkpoint
from bptrain.config import Config, to_dict, validate_config
from bptrain.errors import UserError


def load_resume(
    cfg: Config, resume: str | None
) -> tuple[dict[str, Any] | None, Path | None, FileStamp | None]:
    """The checkpoint to continue from (None: start fresh), read with weights_only=True and
    checked against `cfg`, and its file's stamp as it was read (see ``changed_since``)."""
    path = distributed.broadcast(resume_path(cfg, resume))  # under DDP rank 0 decides
    if path is None:
        return None, None, None
    stamp = file_stamp(path)  # before reading: a replacement during the read shows as a change
    # FSDP: each rank reads its own slices of a sharded checkpoint (RunState's `shards` part);
    # any other run reads the full state of one (the optimizer keyed by parameter names)
    shards = () if cfg.trainer.strategy == "fsdp" else ("model", "optimizer")
    saved = {} if path.suffix == ".safetensors" else load_checkpoint(path, shards=shards)
    for key in ("model", "progress", "optimizer", "scaler", "rng"):
        if key not in saved:
            raise UserError(
                f"cannot resume from {path}: it has no '{key}' (a weights-only file?). "
                "To start a new run from its weights, use model.init_from instead of --resume."
            )
    check_same_model_and_data(saved, cfg, path)
    return saved, path, stamp


FileStamp = tuple[int, int, int]


def file_stamp(path: Path) -> FileStamp | None:
    """(inode, size, mtime in ns): checkpoints are replaced whole (os.replace), so a new one differs."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


def refuse_if_replaced(path: Path, stamp: FileStamp | None) -> None:
    """The checkpoint a resume read was replaced before this process took the run directory:
    another process was still training in it (and has ended since). Continuing would cut its
    newer epochs from metrics.jsonl and train them again; nothing has been written yet."""
    if stamp is not None and file_stamp(path) != stamp:
        raise UserError(
            f"{path} was replaced while this process was starting: another process was still "
            "training this run and has ended since. Run the same command again to resume from "
            "its newest checkpoint."
        )


def resume_path(cfg: Config, resume: str | None) -> Path | None:
    """`auto`: the newest run of this config name that has a last.pt (None: start fresh); else a path."""
    if resume is None:
        return None
    if resume == "auto":
        base = cfg.logging.run_dir / (cfg.logging.name or "run")
        candidates = sorted(base.glob("*/checkpoints/last.pt"), key=_run_order)
        return candidates[-1] if candidates else None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(
            f"--resume {resume}: no checkpoint there. Give a last.pt file, a run directory, or 'auto'."
        )
    return path


def _run_order(last: Path) -> tuple[str, int]:
    """Run directories are <timestamp>[-N]: order by timestamp, then N as a number (-10 after -9)."""
    parts = last.parent.parent.name.split("-")
    suffix = parts[2] if len(parts) > 2 and parts[2].isdigit() else "0"
    return "-".join(parts[:2]), int(suffix)


def run_dir_of(checkpoint: Path | None) -> Path | None:
    """A checkpoint inside <run>/checkpoints/ continues that run; one from elsewhere starts a new run directory."""
    if checkpoint is None or checkpoint.parent.name != "checkpoints":
        return None
    return checkpoint.parent.parent


# What a resume may change. The model and the data define what the checkpoint's weights mean;
# the optimizer and the LR schedule carry state (moments, the schedule's position) that only fits
# the same settings, and torch's load_state_dict would silently put the saved hyperparameters
# (lr, weight_decay, ...) back over changed ones. So those four sections must stay as they were.
# trainer.precision may move between 32 and bf16, but not to or from fp16 (its GradScaler's loss
# scale is state). Everything else may change: limits (max_epochs, max_steps), logging,
# checkpoint cadence and monitor (top-k ranking restarts), early stopping, nan_policy, device.
FIXED_SECTIONS = ("model", "data", "optimizer", "scheduler")


def check_same_model_and_data(saved: dict[str, Any], cfg: Config, path: Path) -> None:
    """Refuse, before anything is built or written, a config that changed what a resume must keep."""
    old_cfg, new_cfg = _with_todays_defaults(saved.get("config", {})), to_dict(cfg)
    for section in FIXED_SECTIONS:
        old, new = old_cfg.get(section), new_cfg.get(section)
        if old != new:
            raise UserError(
                f"cannot resume from {path}: the config's '{section}' section differs from the "
                f"checkpoint's ({_changed(section, old, new)}). A resume keeps the model, data, "
                "optimizer and scheduler sections (limits such as trainer.max_epochs may change); "
                "to change them, start a new run (model.init_from can start from its weights)."
            )
    old_precision = str(old_cfg.get("trainer", {}).get("precision", "32"))
    new_precision = cfg.trainer.precision
    if old_precision != new_precision and "fp16" in (old_precision, new_precision):
        raise UserError(
            f"cannot resume from {path}: trainer.precision was {old_precision}, now "
            f"{new_precision}. fp16's loss scale is part of the run's state: resume with "
            f"trainer.precision={old_precision} (32 and bf16 may be swapped), or start a new run "
            "(model.init_from can start from its weights)."
        )


def _changed(section: str, old: Any, new: Any) -> str:
    """The keys that differ, as dotted paths (or the whole values when one side is not a mapping)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return f"{section}: {old!r} -> {new!r}"
    if "name" in old and old.get("name") != new.get("name"):  # another kind: its keys differ too
        return f"{section}.name: {old['name']!r} -> {new.get('name')!r}"
    keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    return ", ".join(f"{section}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def _with_todays_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The saved config as this bptrain resolves it: keys added since it was written take their defaults
    (so a new optional key does not make an old run's model or data section 'differ')."""
    try:
        return to_dict(validate_config(config))
    except (UserError, ValueError, TypeError):
        return config


def version_warning(saved: dict[str, Any], path: Path) -> str | None:
    """A note when another torch wrote the checkpoint: the run continues, bit-exactness is not promised."""
    written_by = saved.get("versions", {}).get("torch")
    if written_by in (None, torch.__version__):
        return None
    return (
        f"{path} was written by torch {written_by}, this is {torch.__version__}: "
        "the run continues, but bit-exact continuation is not guaranteed."
    )
