"""Resuming a run: what a checkpoint holds (``checkpoint_state``), finding it (``--resume``), and restoring it.

A resumed run must continue at exactly the same micro-batch with exactly the same numbers,
so the checkpoint holds model, optimizer, scheduler, grad scaler, loop ``Progress``, the
trackers' states, every RNG, a fingerprint of the epoch's data order, and the config; restoring
refuses a config whose model or data changed. (Writing files atomically is ``checkpoint.py``'s job.)
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import bptrain
from bptrain import distributed
from bptrain.checkpoint import load_checkpoint, model_state
from bptrain.config import Config, to_dict
from bptrain.data import Batches
from bptrain.errors import UserError
from bptrain.runtime import rng_state, set_rng_state


@dataclass
class Progress:
    """Where the run is. Saved in every checkpoint; enough to continue at the exact same micro-batch."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batch_in_epoch: int = 0  # micro-batches of the current epoch already trained on
    epoch_loss_sum: float = 0.0  # running sums for the epoch's train/loss
    epoch_samples: int = 0
    schedule_steps: int = 0  # horizon of per-step LR schedules, fixed when the run starts
    metrics_bytes: int = 0  # length of metrics.jsonl when this checkpoint was written


def data_order_crc(batches: Batches, epoch: int) -> int | None:
    """A fingerprint (crc32) of the epoch's sample order: resume is exact only if it is unchanged."""
    indices = getattr(batches, "_indices", None)
    if indices is None:
        return None
    cached = getattr(batches, "_order_crc", None)  # one permutation per epoch, not one per save
    if cached is not None and cached[0] == epoch:
        return cached[1]
    previous = getattr(batches, "epoch", epoch)
    batches.set_epoch(epoch)
    try:
        crc = zlib.crc32(indices().to(torch.int64).cpu().numpy().tobytes())
    finally:
        batches.set_epoch(previous)
    batches._order_crc = (epoch, crc)  # type: ignore[attr-defined]
    return crc


def checkpoint_state(
    cfg, data, model, optimizer, scheduler, precision, state: Progress,
    tracker, stopper, guard, best_weights,
) -> dict[str, Any]:  # fmt: skip
    spec = data.spec
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": precision.scaler.state_dict(),
        "progress": asdict(state),
        "checkpoint_tracker": tracker.state_dict(),
        "early_stopping": stopper.state_dict() if stopper is not None else None,
        "early_stopping_best_weights": best_weights,
        "nan_guard": guard.state_dict(),
        "rng": rng_state(),
        "data_order": {
            "seed": cfg.seed,
            "epoch": state.epoch,
            "crc32": data_order_crc(data.train, state.epoch),
        },
        "config": to_dict(cfg),
        "data_spec": {
            "task": spec.task,
            "input_shape": list(spec.input_shape),
            "num_classes": spec.num_classes,
            "target_shape": list(spec.target_shape),
        },
        # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses
        "versions": {"bptrain": bptrain.__version__, "torch": str(torch.__version__)},
    }


def load_resume(cfg: Config, resume: str | None) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint to continue from (None: start fresh), read with weights_only=True."""
    path = distributed.broadcast(resume_path(cfg, resume))  # under DDP rank 0 decides
    if path is None:
        return None, None
    saved = {} if path.suffix == ".safetensors" else load_checkpoint(path)
    for key in ("model", "progress", "optimizer", "scaler", "rng"):
        if key not in saved:
            raise UserError(
                f"cannot resume from {path}: it has no '{key}' (a weights-only file?). "
                "To start a new run from its weights, use model.init_from instead of --resume."
            )
    return saved, path


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


def restore(
    saved, path, cfg, data, model, optimizer, scheduler, precision, console
) -> tuple[Progress, dict[str, torch.Tensor] | None]:
    old_cfg, new_cfg = saved.get("config", {}), to_dict(cfg)
    for section in ("model", "data"):
        if old_cfg.get(section) != new_cfg.get(section):
            changed = sorted(
                k
                for k in {*old_cfg.get(section, {}), *new_cfg.get(section, {})}
                if old_cfg.get(section, {}).get(k) != new_cfg.get(section, {}).get(k)
            )
            raise UserError(
                f"cannot resume from {path}: the config's '{section}' section differs from the checkpoint's "
                f"({', '.join(f'{section}.{k}' for k in changed)}). Resume with the same model and data "
                "(limits such as trainer.max_epochs may change), or start a new run (model.init_from can start from its weights)."
            )
    model.load_state_dict(model_state(saved, path))
    try:
        optimizer.load_state_dict(saved["optimizer"])
    except (ValueError, KeyError) as err:
        raise UserError(
            f"cannot resume from {path}: the optimizer state does not fit ({err}). Was optimizer.name or model.freeze changed?"
        ) from None
    if scheduler is not None and saved.get("scheduler") is not None:
        scheduler.load_state_dict(saved["scheduler"])
    precision.scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    state = Progress(**saved["progress"])
    versions = saved.get("versions", {})
    if versions.get("torch") not in (None, torch.__version__):
        console.print(
            f"[yellow]warning:[/yellow] {path} was written by torch {versions['torch']}, this is {torch.__version__}: "
            "the run continues, but bit-exact continuation is not guaranteed."
        )
    order = saved.get("data_order", {}).get("crc32")
    if order is not None and order != data_order_crc(data.train, state.epoch):
        console.print(
            "[yellow]warning:[/yellow] the data order of this epoch differs from the checkpoint's "
            "(another torch version?): the resumed run will not reproduce the original exactly."
        )
    es = cfg.trainer.early_stopping
    keep = es is not None and es.restore_best_weights  # the resumed config decides
    return state, saved.get("early_stopping_best_weights") if keep else None
