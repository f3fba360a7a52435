"""Preprocessing: everything fitted on the training data that inference must apply unchanged.

A model trained on standardised inputs is only right on inputs standardised with the *same*
mean and std; a model trained on csv labels "cat"/"dog" outputs class indices that mean
something only through the same label mapping. ``Preprocessing`` holds those fitted pieces,
plus the data's shape (``DataSpec``) so a model can be rebuilt without the training data:

- the input standardisation (``mean``/``std``, broadcasting over one sample), if any;
- the class names (csv string labels in sorted order, image-folder class directories);
- the csv feature columns (names, in order) and the target column;
- how raw inputs are read (images: size and colour mode).

It is stored in every checkpoint (key ``preprocessing``, plain tensors and lists, so
``torch.load(weights_only=True)`` reads it) and written as JSON beside exported models and
in the run directory (``preprocessing.json``, documented in the README). ``eval``,
``predict``, ``export`` and ``load_run`` apply it instead of re-fitting on the data they are given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bptrain.data.bundle import DataSpec
from bptrain.errors import UserError

FORMAT = 1  # the version of the state/JSON layout below


@dataclass
class Preprocessing:
    """What was fitted on the training split (see the module docstring)."""

    spec: DataSpec
    mean: torch.Tensor | None = None  # shaped like one sample, broadcasting (per feature/channel)
    std: torch.Tensor | None = None
    class_names: list[str] | None = None  # index -> the user's label; None: labels are 0..C-1
    feature_names: list[str] | None = None  # csv feature columns, in the model's order
    target_name: str | None = None  # csv target column
    image: dict[str, Any] | None = None  # image folders: {"size": int, "grayscale": bool}
    integer_inputs: bool = False  # token ids the model embeds: kept int64, never standardised
    source: str = ""  # data.source the model was trained on

    # ------------------------------------------------------------------ applying it

    def transform(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Raw inputs (N, *input_shape) -> what the model takes: dtype, then (x - mean) / std."""
        x = torch.as_tensor(x)
        if self.integer_inputs:
            return x.to(torch.int64)
        x = x.to(torch.float32)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x

    def check_inputs(self, shape: tuple[int, ...], where: str) -> None:
        """Refuse inputs whose per-sample shape is not the training one, naming both shapes."""
        if len(shape) == 0 or shape[0] == 0:
            raise UserError(f"{where}: no samples (shape {tuple(shape)}).")
        if tuple(shape[1:]) != tuple(self.spec.input_shape):
            per_sample = ", ".join(map(str, self.spec.input_shape))
            raise UserError(
                f"{where}: inputs have shape {tuple(shape)}, i.e. {tuple(shape[1:])} per sample, but the "
                f"model was trained on (N, {per_sample})."
            )

    def encode_labels(self, labels: list[str], where: str) -> np.ndarray:
        """The user's labels -> class indices with the training mapping; unknown labels are named."""
        if self.class_names is None:
            try:
                values = np.array([float(v) for v in labels])
            except ValueError:
                raise UserError(
                    f"{where}: the model was trained on numeric targets, but the target column has "
                    f"non-numeric values (e.g. {next(v for v in labels if not _is_number(v))!r})."
                ) from None
            if self.spec.task == "regression":
                return values.astype(np.float32)
            if not np.all(values == np.round(values)) or values.min() < 0:
                raise UserError(f"{where}: class labels must be integers 0..C-1.")
            return values.astype(np.int64)
        lookup = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted({v for v in labels if v not in lookup})
        if unknown:
            raise UserError(
                f"{where}: unknown label(s) {', '.join(map(repr, unknown[:8]))}; the model knows "
                f"{', '.join(map(repr, self.class_names))}."
            )
        return np.array([lookup[v] for v in labels], dtype=np.int64)

    def label_of(self, index: int) -> str | int:
        """Class index -> the user's original label (the index itself when labels were numbers)."""
        return self.class_names[index] if self.class_names is not None else int(index)

    def as_module(self) -> nn.Module:
        """The standardisation as a module (for exporting it inside the model's graph)."""
        return Standardize(self.mean, self.std)

    # ------------------------------------------------------------------ saving it

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and strings: ``torch.load(weights_only=True)`` reads it back."""
        return {
            "format": FORMAT,
            "spec": spec_to_dict(self.spec),
            "mean": None if self.mean is None else self.mean.detach().cpu().clone(),
            "std": None if self.std is None else self.std.detach().cpu().clone(),
            "class_names": None if self.class_names is None else list(self.class_names),
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "target_name": self.target_name,
            "image": None if self.image is None else dict(self.image),
            "integer_inputs": self.integer_inputs,
            "source": self.source,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Become the saved preprocessing (the checkpoint contract; see run_state.py)."""
        saved = Preprocessing.from_state_dict(state)
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(saved, name))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Preprocessing:
        def tensor(value: Any) -> torch.Tensor | None:
            return None if value is None else torch.as_tensor(value, dtype=torch.float32)

        return cls(
            spec=spec_from_dict(state["spec"]),
            mean=tensor(state.get("mean")),
            std=tensor(state.get("std")),
            class_names=state.get("class_names"),
            feature_names=state.get("feature_names"),
            target_name=state.get("target_name"),
            image=state.get("image"),
            integer_inputs=bool(state.get("integer_inputs", False)),
            source=state.get("source", ""),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form written beside exported models (mean/std as nested lists)."""
        state = self.state_dict()
        for key in ("mean", "std"):
            if state[key] is not None:
                state[key] = state[key].tolist()
        state["input_dtype"] = "int64" if self.integer_inputs else "float32"
        state["apply"] = (
            "x = (x - mean) / std (mean/std broadcast over one sample)"
            if self.mean is not None
            else "no standardisation"
        )
        return state

    def write_json(self, path: Path, **extra: Any) -> None:
        path.write_text(json.dumps({**self.to_json(), **extra}, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read_json(cls, path: Path) -> Preprocessing:
        try:
            return cls.from_state_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"cannot read preprocessing from {path}: {err}") from None


class Standardize(nn.Module):
    """(x - mean) / std with the training statistics as buffers (identity without them)."""

    def __init__(self, mean: torch.Tensor | None, std: torch.Tensor | None) -> None:
        super().__init__()
        self.active = mean is not None and std is not None
        self.register_buffer("mean", mean if mean is not None else torch.zeros(()))
        self.register_buffer("std", std if std is not None else torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.active else x


def spec_to_dict(spec: DataSpec) -> dict[str, Any]:
    return {
        "task": spec.task,
        "input_shape": list(spec.input_shape),
        "num_classes": spec.num_classes,
        "target_shape": list(spec.target_shape),
        "token_range": spec.token_range,
    }


def stored_preprocessing(
    saved: dict[str, Any] | None, checkpoint: Path | None
) -> Preprocessing | None:
    """The preprocessing a checkpoint (or, for a .safetensors, its run directory) holds; None when
    there is no checkpoint or it has none (bptrain 0.1): the caller then fits it on the training data."""
    if saved is None or checkpoint is None:
        return None
    if isinstance(saved.get("preprocessing"), dict):
        return Preprocessing.from_state_dict(saved["preprocessing"])
    beside = Path(checkpoint).parent.parent / "preprocessing.json"
    if Path(checkpoint).parent.name == "checkpoints" and beside.is_file():
        return Preprocessing.read_json(beside)
    return None


def spec_from_dict(state: dict[str, Any]) -> DataSpec:
    return DataSpec(
        state["task"],
        tuple(state["input_shape"]),
        state.get("num_classes"),
        tuple(state.get("target_shape", ())),
        state.get("token_range"),
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
