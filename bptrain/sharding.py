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

Checkpoints stay single files that every command reads: ``ShardedState`` gathers the full
model and optimizer state to rank 0's CPU (a collective: every rank calls ``gather`` at
the same points) and loads a full state back by resharding it, so a run can resume on
another number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    """The full (unsharded) model and optimizer state of an FSDP run, for single-file checkpoints.

    ``gather(step)`` is a collective that every rank calls at the same points; rank 0 keeps the
    result on its CPU (the other ranks get empty dicts) until the step changes. ``model_part``
    and ``optimizer_part`` are the checkpoint contract's ``model`` and ``optimizer`` entries.
    """

    _OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self._step: int | None = None
        self.model_state: dict[str, Any] = {}
        self.optimizer_state: dict[str, Any] = {}
        self.model_part, self.optimizer_part = _Part(self, "model"), _Part(self, "optimizer")

    def gather(self, step: int) -> None:
        if self._step == step:
            return
        self.model_state = get_model_state_dict(self.model, options=self._OPTIONS)
        self.optimizer_state = get_optimizer_state_dict(
            self.model, self.optimizer, options=self._OPTIONS
        )
        self._step = step

    def load(self, which: str, state: dict[str, Any]) -> None:
        """Every rank loads the full state it read from the file; FSDP keeps this rank's shard."""
        options = StateDictOptions(full_state_dict=True)
        if which == "model":
            set_model_state_dict(self.model, state, options=options)
        else:
            set_optimizer_state_dict(self.model, self.optimizer, state, options=options)
        self._step = None


class _Part:
    def __init__(self, owner: ShardedState, which: str) -> None:
        self.owner, self.which = owner, which

    def state_dict(self) -> dict[str, Any]:
        return self.owner.model_state if self.which == "model" else self.owner.optimizer_state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.owner.load(self.which, state)
