"""The base every config section derives from, and the key path that locates a value in a config."""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, docs come from docstrings."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, data: Any) -> Any:
        """Pydantic's lax mode reads true as 1 (`batch_size: true` would mean 1): refuse it."""
        if not isinstance(data, dict):
            return data
        checked = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            if field is None or not _holds_bool(value):
                continue
            kinds = _leaf_types(field.annotation)
            if bool not in kinds and kinds & {int, float}:
                # A stand-in no number validator accepts: the error lands on this key (and item).
                checked[key] = _mark_bools(value)
        return checked


class BooleanNotNumber:
    """Stands for a true/false given where a number belongs; its repr is the error's 'got ...'."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"{str(self.value).lower()}, a boolean, not a number"


def _mark_bools(value: Any) -> Any:
    if isinstance(value, bool):
        return BooleanNotNumber(value)
    if isinstance(value, list | tuple):
        return [_mark_bools(v) for v in value]
    return value


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, list | tuple) and any(_holds_bool(v) for v in value)


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types inside an annotation: int | None -> {int, NoneType}; list[float] -> {float}."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, tuple):
        return set().union(*(_leaf_types(a) for a in args if a is not Ellipsis))
    if typing.get_origin(annotation) is typing.Annotated:
        return _leaf_types(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return {type(a) for a in args}
    return {annotation}


def usable_path(path: Path | None) -> Path | None:
    """A path the OS can look up: else every stat() of it raises (ENAMETOOLONG, embedded NUL)."""
    if path is None:
        return path
    if "\x00" in str(path):
        raise ValueError("contains a NUL character, which no file name can hold")
    raw = os.fsencode(path)
    if len(raw) > 4096 or any(len(os.fsencode(part)) > 255 for part in path.parts):
        raise ValueError(
            "is too long to be a path: a file or directory name holds at most 255 bytes, a path 4096"
        )
    return path


UsablePath = Annotated[Path, AfterValidator(usable_path)]
"""A Path config value: one the operating system can look up (checked at load, not at first use)."""

KeyPath = tuple[str | int, ...]
