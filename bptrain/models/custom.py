"""Users' own ``nn.Module`` classes, imported from ``model.class_path``.

A config that names a class_path runs that class's code: configs are as
trusted as scripts. The class is built exactly as given (bptrain never
re-initialises its weights), then checked against one batch so a shape mistake
is reported with the layer that failed instead of a traceback mid-training.
"""

from __future__ import annotations

import torch
from torch import nn

from bptrain.class_path import instantiate, resolve
from bptrain.config import CustomModel
from bptrain.errors import UserError


def import_class(class_path: str) -> type:
    """The ``nn.Module`` subclass ``model.class_path`` names (errors exit 2, see ``bptrain.class_path``)."""
    return resolve(class_path, "model.class_path", base=nn.Module)


def build_custom(cfg: CustomModel) -> nn.Module:
    cls = import_class(cfg.class_path)
    return instantiate(cls, "model.class_path", cfg.class_path, cfg.init_args)


def check_fits_data(
    model: nn.Module, sample: torch.Tensor, expected_out: tuple[int, ...], class_path: str
) -> None:
    """Run one forward pass on two samples; name the layer and shapes when it fails."""
    stack: list[str] = []
    failed: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def enter(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            stack.append(name)
            shapes = tuple(a.shape for a in args if isinstance(a, torch.Tensor))
            failed.append((name, module, shapes))  # type: ignore[arg-type]

        return hook

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        stack.pop()
        failed.pop()

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    except Exception as err:
        where = ""
        if failed:
            name, module, shapes = failed[-1]
            shape_text = ", ".join(str(tuple(s)) for s in shapes)
            where = f" at layer '{name}' ({module}) with input shape {shape_text}"
        raise UserError(
            f"model.class_path '{class_path}' does not fit the data: a batch of shape {tuple(sample.shape)} "
            f"fails{where}: {err}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise UserError(
            f"model.class_path '{class_path}': forward must return a tensor, got {type(out).__name__}."
        )
    if tuple(out.shape[1:]) != expected_out:
        raise UserError(
            f"model.class_path '{class_path}' returns shape {tuple(out.shape)} for a batch of {tuple(sample.shape)}, "
            f"but the data needs (batch, {', '.join(map(str, expected_out))}) to match the targets."
        )
