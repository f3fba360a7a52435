"""FSDP2 (``trainer.strategy: fsdp``): parameters, gradients and optimizer state sharded across ranks.

DDP keeps a whole copy of the model, its gradients and its optimizer state on every rank;
``torch.distributed.fsdp.fully_shard`` keeps 1/world_size of each and gathers a block's
parameters only while that block runs forward or backward. It works on gloo (CPU) as on
nccl, so the CPU tests exercise the same code a GPU cluster runs.

``shard`` applies ``fully_shard`` to each *block* (bottom-up: a block is sharded once and
never inside another block), then to the root, the recipe torchtitan uses. Blocks are the
units whose parameters are gathered together: Linear and convolution layers, recurrent
layers, embeddings, bptrain's residual blocks, transformer encoder layers, plus any class a
``class_path`` model names in ``trainer.fsdp_blocks``.

Checkpoints (``ShardedState``): with ``trainer.checkpoint.format: sharded`` (the default
under fsdp) every rank writes its own shard with Distributed Checkpoint (``shards.py``);
with ``full`` the full model and optimizer state is gathered to rank 0's CPU and written
as one file. Both load back on any number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from bptrain.checkpoint import save_checkpoint
from bptrain.shards import load_shards_into, prune, write_shards

BLOCK_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.RNNBase,
    nn.Embedding,
    nn.TransformerEncoderLayer,
)
BUILTIN_BLOCK_NAMES = ("ResidualBlock", "Residual", "ConvBlock")


def shard(
    model: nn.Module, precision: str, block_names: list[str] | tuple[str, ...] = ()
) -> nn.Module:
    """fully_shard each block, then the root; returns the same (now sharded) module."""
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    names = {*BUILTIN_BLOCK_NAMES, *block_names}
    for block in _outermost_blocks(model, names):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def _outermost_blocks(model: nn.Module, names: set[str]) -> list[nn.Module]:
    """Modules that are blocks and not inside another block, children before parents are irrelevant
    since nesting is excluded: each parameter belongs to at most one block (or to the root)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            is_block = type(child).__name__ in names or isinstance(child, BLOCK_TYPES)
            if is_block and any(True for _ in child.parameters()):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module) -> Iterator[None]:
    """FSDP's no_sync: non-final micro-batches of a window accumulate unreduced gradients."""
    module: Any = getattr(model, "_orig_mod", model)
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


class ShardedState:
    """The model and optimizer state of an FSDP run, as its checkpoints hold it.

    Two formats (``trainer.checkpoint.format``). ``full``: ``gather(step)`` collects the full
    model and optimizer state on rank 0's CPU, and ``model_part``/``optimizer_part`` are the
    checkpoint contract's ``model`` and ``optimizer`` entries (one self-contained file).
    ``sharded``: ``gather(step)`` has every rank write its own shard (``shards.write_shards``)
    and ``shards_part`` names that directory in the checkpoint file, whose ``model`` and
    ``optimizer`` entries are then empty. ``gather`` is a collective that every rank calls at
    the same points, at most once per step. Either format loads into either (and on any
    number of processes): ``load`` reshards a full state, ``shards_part`` loads shards.
    """

    _OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True)

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        directory: Path,
        sharded_files: bool = False,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.directory, self.sharded_files = directory, sharded_files
        self._step: int | None = None
        self._weights_step: int | None = None
        self.model_state: dict[str, Any] = {}
        self.optimizer_state: dict[str, Any] = {}
        self.shard_dir: str | None = None  # the shard directory of the last sharded gather
        self.model_part, self.optimizer_part = _Part(self, "model"), _Part(self, "optimizer")
        self.shards_part = _ShardsPart(self)

    def gather(self, step: int, weights: bool = True, shards: bool = True) -> None:
        """Collect the state of `step` for a checkpoint. Sharded: each rank writes its shard, and
        with `weights` the full model weights also come to rank 0 (the .safetensors exports).
        ``shards=False``: the weights alone (the final export), no shard directory that no
        checkpoint file would ever name."""
        if not self.sharded_files:
            if self._step != step:
                self.model_state = get_model_state_dict(self.model, options=self._OPTIONS)
                self.optimizer_state = get_optimizer_state_dict(
                    self.model, self.optimizer, options=self._OPTIONS
                )
                self._step = self._weights_step = step
            return
        if shards and self._step != step:
            self.shard_dir = write_shards(self.model, self.optimizer, self.directory, step)
            self._step = step
        if weights and self._weights_step != step:
            self.model_state = get_model_state_dict(self.model, options=self._OPTIONS)
            self._weights_step = step

    def load(self, which: str, state: dict[str, Any]) -> None:
        """Every rank loads the full state it read from the file; FSDP keeps this rank's shard."""
        options = StateDictOptions(full_state_dict=True)
        if which == "model":
            set_model_state_dict(self.model, state, options=options)
        else:
            set_optimizer_state_dict(self.model, self.optimizer, state, options=options)
        self._step = self._weights_step = None

    def write_file(self, state: dict[str, Any], path: Path) -> None:
        """Write a checkpoint file (rank 0; maybe on the background writer), then delete the shard
        directories that no checkpoint file names any more. A directory of this step or a later
        one is kept: the loop may already have written the next one while this file was queued."""
        save_checkpoint(state, path)
        shards = state.get("shards")
        if shards is not None:
            self.prune_unnamed(shards["dir"])

    def prune_unnamed(self, keep_from: str) -> None:
        """Delete the shard directories that no checkpoint file names, except `keep_from` (the
        newest write, which a file may still come to name) and later ones. Rank 0, after the
        files of a checkpoint (last.pt, best.pt, top-k) are written, in the writer's order."""
        prune(self.directory, referenced_shards(self.directory), keep_from=keep_from)


def referenced_shards(directory: Path) -> set[str]:
    """The shard directories that the checkpoint files in `directory` name.

    Runs at every sharded save, over every ``*.pt`` there (top-k files, best.pt, a consolidated
    full checkpoint...), so each is memory-mapped rather than read: only its small pickle is
    parsed, still with ``weights_only=True``, and its tensors are never brought into memory."""
    names = set()
    for path in directory.glob("*.pt"):
        name = _shard_pointer(path)
        if name is not None:
            names.add(name)
    return names


def _shard_pointer(path: Path) -> str | None:
    """The ``shards["dir"]`` a checkpoint file names; None for a full checkpoint or a file that
    cannot be read (one that cannot be resumed from either)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # damaged, not a zip archive, or refused by weights_only
        return None
    shards = state.get("shards") if isinstance(state, dict) else None
    name = shards.get("dir") if isinstance(shards, dict) else None
    return name if isinstance(name, str) else None


class _Part:
    def __init__(self, owner: ShardedState, which: str) -> None:
        self.owner, self.which = owner, which

    def state_dict(self) -> dict[str, Any] | None:
        if self.owner.sharded_files:
            return None  # in the shard directory that the `shards` entry names
        return self.owner.model_state if self.which == "model" else self.owner.optimizer_state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.owner.load(self.which, state)


class _ShardsPart:
    """The checkpoint's ``shards`` entry: which directory holds the model and optimizer shards."""

    def __init__(self, owner: ShardedState) -> None:
        self.owner = owner

    def state_dict(self) -> dict[str, Any] | None:
        if not self.owner.sharded_files:
            return None
        world_size = torch.distributed.get_world_size()
        return {"dir": self.owner.shard_dir, "world_size": world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """`state` as ``load_checkpoint`` returns it: ``path`` is the directory, resolved."""
        load_shards_into(self.owner.model, self.owner.optimizer, Path(state["path"]))
        self.owner._step = self.owner._weights_step = None
