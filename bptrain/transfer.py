"""Transfer learning: start from saved weights (``model.init_from``) and freeze parameters (``model.freeze``)."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bptrain.checkpoint import load_checkpoint, model_state
from bptrain.errors import UserError


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a bptrain checkpoint, a bare state_dict file, or a .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"weights file not found: {path}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise UserError(
                f"cannot read {path}: it is truncated or not a .safetensors file ({err}). "
                "Use another weights file, or copy it again from its source."
            ) from None
    return model_state(load_checkpoint(path), path)


def load_into(
    model: nn.Module, weights: dict[str, torch.Tensor], path: Path, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load weights, turning shape/key mismatches into a readable error (strict) or a report (not strict)."""
    own = model.state_dict()
    wrong_shape = [
        k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(v.shape)
    ]
    if wrong_shape:
        details = ", ".join(
            f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
            for k in wrong_shape[:5]
        )
        raise UserError(
            f"weights in {path} do not fit the model built from the config ({details})."
        )
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if strict and (missing or unexpected):
        raise UserError(
            f"weights in {path} do not match the model: missing {missing[:8] or 'none'}, unexpected {unexpected[:8] or 'none'}. "
            "Check that the config's model section is the one the weights were trained with."
        )
    model.load_state_dict(weights, strict=False)
    return missing, unexpected


def init_from(model: nn.Module, path: Path, strict: bool) -> dict[str, Any]:
    """Load weights from a bptrain checkpoint, a bare state_dict or a .safetensors file.

    Strict (the default) refuses any missing or unexpected key; not strict loads the keys
    that match and reports the others. Shapes must always match. The file is read with
    ``weights_only=True`` (or as safetensors), so it cannot run code.
    """
    missing, unexpected = load_into(model, load_weights(path), path, strict=strict)
    return {"path": str(path), "strict": strict, "missing": missing, "unexpected": unexpected}


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Set requires_grad=False on every parameter whose name matches one of the fnmatch patterns."""
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise UserError(
                f"model.freeze pattern '{pattern}' matches no parameter. Parameter names: "
                f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
            )
    frozen = []
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            param.requires_grad_(False)
            frozen.append(name)
    if frozen and len(frozen) == len(names):
        raise UserError("model.freeze freezes every parameter: nothing would train.")
    return frozen


def describe_init(report: dict[str, Any]) -> str:
    """One console line: what init_from loaded, and what it could not match (not strict)."""
    line = f"initialised weights from {report['path']}"
    if report["missing"] or report["unexpected"]:
        line += (
            f" (not strict: {len(report['missing'])} missing keys kept their initialisation: "
            f"{', '.join(report['missing'][:6]) or 'none'}; "
            f"{len(report['unexpected'])} unexpected keys ignored: "
            f"{', '.join(report['unexpected'][:6]) or 'none'})"
        )
    return line
