"""What one batch computes: the built-in ``loss(model(x), y)`` or the model's own ``training_step``.

A model may define

    def training_step(self, batch) -> Tensor | dict[str, Tensor]
    def validation_step(self, batch) -> Tensor | dict[str, Tensor]      # optional

``batch`` is whatever the data yields (a tuple, a dict of tensors), already on the device.
The result is the loss, or a dict holding ``"loss"`` plus any other values to log
(``train/<name>``, ``val/<name>``); a validation dict may also hold ``"preds"`` and
``"target"``, which feed the ``metrics:``. Without ``validation_step``, validation calls
``training_step`` under ``torch.no_grad`` in eval mode.

bptrain still owns everything around the call: autocast, gradient scaling, accumulation
(the loss is weighted by the batch's share of the window, exactly as for a built-in
model), clipping, the non-finite guard, DDP and logging. Under DDP the call goes through
``StepModule``'s ``forward`` so DistributedDataParallel sees it (a method called on the
inner module would bypass DDP's gradient synchronisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from bptrain.errors import UserError

__all__ = [
    "RESERVED",
    "StepModule",
    "UserStep",
    "batch_size",
    "check_user_step",
    "has_training_step",
    "split_output",
    "to_device",
]

RESERVED = ("loss", "preds", "target")


def has_training_step(model: nn.Module) -> bool:
    return callable(getattr(model, "training_step", None))


class UserStep:
    """What ``train_step`` calls for a model with ``training_step``; ``losses.Objective`` is the built-in."""

    def compute(
        self, forward: nn.Module, batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, other values to log) of one micro-batch. ``forward`` is the StepModule (wrapped
        by DDP or torch.compile in ``fit``) or the bare model (lr-find)."""
        output = forward(batch, "train") if _routes_steps(forward) else forward.training_step(batch)
        return split_output(output, "training_step")


def _routes_steps(module: nn.Module | None) -> bool:
    """Whether ``module`` is a StepModule, or wraps one (DDP's .module, torch.compile's ._orig_mod)."""
    seen = set()
    while module is not None and id(module) not in seen:
        if isinstance(module, StepModule):
            return True
        seen.add(id(module))
        module = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
    return False


class StepModule(nn.Module):
    """Routes ``forward(batch, stage)`` to the model's ``training_step`` / ``validation_step``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, batch: Any, stage: str = "train") -> Any:
        if stage == "val" and callable(getattr(self.module, "validation_step", None)):
            return self.module.validation_step(batch)
        return self.module.training_step(batch)


def split_output(output: Any, where: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, other logged values) from a step's result; a missing or non-scalar loss is a UserError."""
    if isinstance(output, torch.Tensor):
        logged: dict[str, torch.Tensor] = {}
        loss = output
    elif isinstance(output, Mapping):
        if "loss" not in output:
            keys = ", ".join(map(str, output)) or "nothing"
            raise UserError(
                f"{where} returned a dict without 'loss' (it has {keys}). Return the loss tensor, "
                "or a dict {'loss': loss, ...other values to log}."
            )
        loss = output["loss"]
        logged = {str(k): v for k, v in output.items() if k not in RESERVED}
    else:
        raise UserError(
            f"{where} returned {type(output).__name__}; it must return the loss tensor or a dict "
            "{'loss': loss, ...other values to log}."
        )
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise UserError(
            f"{where}: 'loss' must be a scalar tensor (reduce it with .mean()); got {got}."
        )
    for key, value in logged.items():
        if not (
            isinstance(value, torch.Tensor | float | int) and torch.as_tensor(value).numel() == 1
        ):
            raise UserError(
                f"{where}: the logged value '{key}' must be a scalar (a 0-d tensor or a number)."
            )
    return loss.reshape(()), {k: torch.as_tensor(v).detach().reshape(()) for k, v in logged.items()}


def batch_size(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor (tuples, lists and dicts are searched)."""
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if type(batch) is tuple and batch and isinstance(batch[0], torch.Tensor):
        return len(batch[0])
    if isinstance(batch, Mapping | list | tuple):
        for value in batch.values() if isinstance(batch, Mapping) else batch:
            try:
                return batch_size(value)
            except UserError:
                continue
    raise UserError(f"a batch must contain at least one tensor; got {type(batch).__name__}.")


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) tuple, list or dict to ``device``; keep the rest."""
    if type(batch) is tuple and len(batch) == 2:  # (x, y): the hot path of every built-in step
        x, y = batch
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def check_user_step(model: nn.Module, batch: Any, device: torch.device, needs_preds: bool) -> None:
    """Run ``training_step`` (and ``validation_step``) once on a real batch before training, so
    a step that fails or returns no loss is a UserError (exit 2), not a crash at step 1.

    Under ``no_grad`` in eval mode, with every RNG restored afterwards: the run that follows
    is exactly the one it would have been without the check. ``needs_preds``: the config
    lists metrics, so ``validation_step`` must return ``preds`` and ``target``.
    """
    batch = to_device(batch, device)
    was_training = model.training
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            for hook in ("training_step", "validation_step"):
                method = getattr(model, hook, None)
                if method is None:
                    continue
                try:
                    output = method(batch)
                except Exception as err:
                    raise UserError(
                        f"{type(model).__name__}.{hook} fails on the first batch: "
                        f"{type(err).__name__}: {err}"
                    ) from None
                split_output(output, f"{type(model).__name__}.{hook}")
                if (
                    hook == "validation_step"
                    and needs_preds
                    and not (
                        isinstance(output, Mapping) and "preds" in output and "target" in output
                    )
                ):
                    raise UserError(
                        f"the config lists metrics, but {type(model).__name__}.validation_step "
                        "returns no 'preds' and 'target' to compute them from: return "
                        "{'loss': ..., 'preds': ..., 'target': ...}, or remove metrics: from the config."
                    )
            if needs_preds and getattr(model, "validation_step", None) is None:
                raise UserError(
                    f"the config lists metrics, but {type(model).__name__} has no validation_step "
                    "returning 'preds' and 'target' to compute them from (docs/extending.md)."
                )
    finally:
        model.train(was_training)
