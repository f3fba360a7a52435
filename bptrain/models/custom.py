"""Users' own ``nn.Module`` classes, imported from ``model.class_path``.

A config that names a class_path runs that class's code: configs are as
trusted as scripts. The class is built exactly as given (bptrain never
re-initialises its weights), then checked against one batch so a shape mistake
is reported with the layer that failed instead of a traceback mid-training.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from bptrain.config import CustomModel
from bptrain.errors import UserError


def import_class(class_path: str) -> type:
    module_name, _, class_name = class_path.replace(":", ".").rpartition(".")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise UserError(
            f"model.class_path '{class_path}': cannot import module '{module_name}' ({err}). "
            f"It must be importable from the current directory ({cwd}) or PYTHONPATH."
        ) from None
    except Exception as err:  # the user's module itself failed while importing
        raise UserError(
            f"model.class_path '{class_path}': importing '{module_name}' failed: {type(err).__name__}: {err}"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        names = [n for n, v in vars(module).items() if isinstance(v, type)]
        close = difflib.get_close_matches(class_name, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(
            f"model.class_path '{class_path}': module '{module_name}' has no class '{class_name}'.{hint}"
        )
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"model.class_path '{class_path}' is not a torch.nn.Module subclass.")
    return cls


def build_custom(cfg: CustomModel) -> nn.Module:
    cls = import_class(cfg.class_path)
    try:
        return cls(**cfg.init_args)
    except TypeError as err:
        raise UserError(
            f"model.init_args do not fit {cfg.class_path}{inspect.signature(cls)}: {err}"
        ) from None


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
