"""What a checkpoint holds: every stateful part of a run, under one name each.

A resumed run must continue at exactly the same micro-batch with exactly the same numbers.
Every part that changes while training exposes ``state_dict()`` / ``load_state_dict()``;
``RunState`` maps checkpoint keys to those parts, and saving and restoring iterate that
one mapping, so a part cannot be saved and then forgotten on restore (or the reverse).
A checkpoint also records the config, the data's shape and the versions that wrote it.
Finding the checkpoint to resume from is ``resume.py``'s job; writing files atomically
is ``checkpoint.py``'s. The format is documented in docs/checkpointing.md.

Format versions: 1 (bptrain 0.1, no ``format_version`` key), 2 (the same keys plus
``format_version``) and 3 (a sharded checkpoint: ``shards`` names the directory holding the
model and optimizer, whose own entries are None; see ``shards.py``). All load; a full
checkpoint is still written as format 2, so older bptrain versions keep reading it. A part's
state may gain a key within a version (``nan_guard``'s ``prev_scale``, the fp16 AMP-skip
detector's reference): its ``load_state_dict`` reads it when present, and an older file leaves
it fresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import torch

from bptrain.config import Config, to_dict
from bptrain.data import Batches, DataSpec
from bptrain.errors import UserError
from bptrain.runtime import rng_state, set_rng_state
from bptrain.version import __version__

FORMAT_VERSION = 3  # the newest format this bptrain reads
FULL_FORMAT_VERSION = 2  # what a full (unsharded) checkpoint is written as


class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> Any: ...


@dataclass
class LoopState:
    """Where the loop is: enough to continue at the exact same micro-batch (checkpoint key ``progress``)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batch_in_epoch: int = 0  # micro-batches of the current epoch already trained on
    epoch_loss_sum: float = 0.0  # running sums for the epoch's train/loss
    epoch_samples: int = 0
    schedule_steps: int = 0  # horizon of per-step LR schedules, fixed when the run starts
    metrics_bytes: int = 0  # length of metrics.jsonl when this checkpoint was written
    world_size: int = 1  # processes that trained it (absent before 0.2: then not converted)
    rank: int = 0  # this process's (saved by rank 0; a restore keeps its own)
    # every rank's (epoch_loss_sum, epoch_samples) when the checkpoint was taken (Run.gather):
    # a checkpoint is written by rank 0, but the epoch's train/loss sums over every rank's share
    rank_sums: list[tuple[float, int]] | None = None

    def state_dict(self) -> dict[str, Any]:
        state = asdict(self)
        del state["rank"]  # always rank 0's, who writes the file: each process knows its own
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)} - {
            "world_size",
            "rank",
        }  # this run's, not the file's
        for key, value in state.items():
            if key in known:
                setattr(self, key, value)
        if self.rank_sums:  # this rank's share, or on another world size rank 0 holds them all
            if len(self.rank_sums) == self.world_size:
                loss_sum, samples = self.rank_sums[self.rank]
            elif self.rank == 0:
                loss_sum, samples = (sum(x) for x in zip(*self.rank_sums, strict=True))
            else:
                loss_sum, samples = 0.0, 0
            self.epoch_loss_sum, self.epoch_samples = float(loss_sum), int(samples)
        saved_world = state.get("world_size")
        if saved_world and saved_world != self.world_size and self.batch_in_epoch:
            self._reshard(saved_world)

    def _reshard(self, saved_world: int) -> None:
        """A mid-epoch checkpoint resumed on another number of processes. Rank r trains the
        positions r, r+W, r+2W... of the epoch's order, so k micro-batches per rank on W ranks
        consumed the first k*W batches' worth of that order: continue after the same samples."""
        self.batch_in_epoch = self.batch_in_epoch * saved_world // self.world_size


class RandomState:
    """Every RNG the loop (or user code) may draw from: Python, NumPy, torch, CUDA."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)


class BestWeights:
    """A CPU copy of the best epoch's weights, for early_stopping.restore_best_weights.

    Only kept (and restored) while the config asks for it: the resumed config decides.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.weights: dict[str, torch.Tensor] | None = None

    def keep(self, model: torch.nn.Module) -> None:
        if self.enabled:
            self.weights = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.weights

    def load_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        self.weights = state if self.enabled else None


class DataOrder:
    """A fingerprint of the epoch's sample order. Restoring checks it rather than sets it:
    the order is a pure function of (seed, epoch), and a different one (another torch
    version's permutation) means the resumed run cannot reproduce the original exactly."""

    def __init__(self, seed: int, batches: Batches, loop: LoopState, warn: Callable[[str], None]):
        self.seed, self.batches, self.loop, self.warn = seed, batches, loop, warn

    def _crc(self, epoch: int) -> int | None:
        fingerprint = getattr(self.batches, "order_fingerprint", None)
        return fingerprint(epoch) if fingerprint is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "epoch": self.loop.epoch,
            "crc32": self._crc(self.loop.epoch),
            "world_size": self.loop.world_size,  # the crc is of rank 0's share of the order
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_world = state.get("world_size", self.loop.world_size)
        if saved_world != self.loop.world_size:
            if self.loop.batch_in_epoch:
                self.warn(
                    f"the checkpoint was written by {saved_world} process(es) mid-epoch and this "
                    f"run has {self.loop.world_size}: the epoch continues after the samples "
                    "already trained on."
                )
            return  # another world size shards the same order differently: nothing to compare
        saved = state.get("crc32")
        if saved is not None and saved != self._crc(self.loop.epoch):
            self.warn(
                "the data order of this epoch differs from the checkpoint's (another torch "
                "version?): the resumed run will not reproduce the original exactly."
            )


class RunState:
    """The checkpoint contract: checkpoint key -> the part that owns that state.

    Parts that a config leaves out (no scheduler, no early stopping) are None and are
    saved as None. ``save`` and ``restore`` iterate the same mapping.
    """

    def __init__(self, parts: dict[str, Stateful | None], config: Config, spec: DataSpec):
        self.parts, self.config, self.spec = parts, config, spec

    def save(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            key: None if part is None else part.state_dict() for key, part in self.parts.items()
        }
        state.update(
            format_version=FORMAT_VERSION if state.get("shards") else FULL_FORMAT_VERSION,
            config=to_dict(self.config),
            data_spec={
                "task": self.spec.task,
                "input_shape": list(self.spec.input_shape),
                "num_classes": self.spec.num_classes,
                "target_shape": list(self.spec.target_shape),
            },
            # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses
            versions={"bptrain": __version__, "torch": str(torch.__version__)},
        )
        return state

    def restore(self, saved: dict[str, Any], source: str) -> None:
        """Load every part that the checkpoint has a state for (a part absent in 0.1 files is left fresh)."""
        version = saved.get("format_version", 1)
        if version > FORMAT_VERSION:
            raise UserError(
                f"{source} has checkpoint format {version}; this bptrain ({__version__}) "
                f"reads formats up to {FORMAT_VERSION}. Upgrade bptrain to resume it."
            )
        for key, part in self.parts.items():
            if part is None or saved.get(key) is None:
                continue
            try:
                part.load_state_dict(saved[key])
            except (ValueError, KeyError, RuntimeError) as err:
                raise UserError(
                    f"cannot resume from {source}: its '{key}' state does not fit this run ({err}). "
                    f"{_HINTS.get(key, 'Resume with the config the run was started with.')}"
                ) from None


_HINTS = {
    "model": "Resume with the same model section, or start a new run with model.init_from.",
    "optimizer": "Was optimizer.name or model.freeze changed? Resume with the original optimizer "
    "settings, or start a new run with model.init_from.",
    "scheduler": "Was scheduler.name changed? Resume with the original scheduler.",
    "scaler": "Was trainer.precision changed? Resume with the original precision.",
    "shards": "Resume with the same model and optimizer settings, or start a new run with "
    "model.init_from.",
}
