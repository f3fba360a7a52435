"""Validation errors as users read them: where (file, line, key path), what, and a did-you-mean."""

from __future__ import annotations

import difflib
import re
import reprlib
from typing import Any

from pydantic import BaseModel, ValidationError

from bptrain.config.base import KeyPath
from bptrain.config.extend import BUILTIN
from bptrain.config.schema import Config, models_in, ordered_keys


def format_validation_error(
    err: ValidationError, data: Any, origins: dict[KeyPath, str], source: str
) -> str:
    messages = []
    for problem in err.errors(include_url=False):
        path = _clean_loc(problem["loc"], data)
        if problem["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = (*path, str(problem.get("ctx", {}).get("discriminator", "name")).strip("'"))
        where = _origin(path, origins) or source
        dotted = ".".join(str(p) for p in path) or "(top level)"
        messages.append(f"{where}: {dotted}: {_describe(problem, path, data)}")
    count = len(messages)
    header = f"invalid config ({count} problem{'s' if count > 1 else ''}):"
    return "\n".join([header, *("  - " + m for m in messages)])


def _clean_loc(loc: tuple[Any, ...], data: Any) -> KeyPath:
    """Drop the union tags pydantic puts into locations so the path matches the user's keys."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict | list):
            # Either a union tag (skip it) or a missing/unknown key (keep it).
            if isinstance(part, str) and _is_union_tag(part):
                continue
            path.append(part)
            node = None
        else:
            if isinstance(part, str) and _is_union_tag(part):
                continue
            path.append(part)
    return tuple(path)


def _is_union_tag(part: str) -> bool:
    return part in _UNION_TAGS or "[" in part or part.startswith("function-")


def _origin(path: KeyPath, origins: dict[KeyPath, str]) -> str | None:
    for end in range(len(path), 0, -1):
        if path[:end] in origins:
            return origins[path[:end]]
    return None


def _describe(problem: dict[str, Any], path: KeyPath, data: Any) -> str:
    kind = problem["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(path[:-1], data)
        key = str(path[-1]) if path else ""
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        listing = f" Valid keys here: {', '.join(valid)}." if valid else ""
        return f"unknown key '{key}'.{hint}{listing}"
    if kind == "missing":
        return "this key is required but missing."
    if kind == "union_tag_invalid":
        ctx = problem.get("ctx", {})
        got, options = ctx.get("tag"), str(ctx.get("expected_tags", ""))
        close = difflib.get_close_matches(
            str(got), re.findall(r"'([^']+)'", options), n=1, cutoff=0.6
        )
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown choice {got!r}; expected one of {options}.{hint}"
    if kind == "union_tag_not_found":
        return "this key is required: it selects the variant."
    if kind == "literal_error":
        got = problem.get("input")
        options = problem.get("ctx", {}).get("expected", "")
        close = difflib.get_close_matches(
            str(got), re.findall(r"'([^']+)'", options), n=1, cutoff=0.6
        )
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"got {_shown(got)}; expected one of {options}.{hint}"
    got = problem.get("input")
    msg = problem["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    shown = "" if isinstance(got, dict) else f" (got {_shown(got)})"
    return f"{msg}{shown}."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 80, 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 8


def _shown(value: Any) -> str:
    """A value as an error quotes it: cut short, in time bounded however big the value is."""
    return _REPR.repr(value)


def _valid_keys(path: KeyPath, data: Any) -> list[str]:
    model = _model_at(path, data)
    if model is None:
        return []
    return ordered_keys(model.model_fields)


def _model_at(path: KeyPath, data: Any) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    node, annotation = data, None
    for key in path:
        if isinstance(key, int):  # an item of a list section (metrics, callbacks)
            if annotation is None or not isinstance(node, list) or key >= len(node):
                return None
            node = node[key]
            model = _pick_model(annotation, node)
            continue
        if model is None or key not in model.model_fields:
            return None
        annotation = model.model_fields[key].annotation
        node = node.get(key) if isinstance(node, dict) else None
        model = _pick_model(annotation, node)
    return model


def _pick_model(annotation: Any, value: Any) -> type[BaseModel] | None:
    members = models_in(annotation)
    if len(members) <= 1:
        return members[0] if members else None
    if isinstance(value, dict) and "class_path" in value:  # the member that has class_path
        return next((m for m in members if "class_path" in m.model_fields), members[0])
    for member in members:
        for tag_field in ("name", "source"):
            field = member.model_fields.get(tag_field)
            if (
                field is not None
                and isinstance(value, dict)
                and value.get(tag_field) in getattr(field.annotation, "__args__", ())
            ):
                return member
    return members[0]


def _collect_union_tags() -> set[str]:
    tags = {"custom", BUILTIN, "metric"}
    for field in Config.model_fields.values():
        for member in models_in(field.annotation):
            for tag_field in ("name", "source"):
                if tag_field in member.model_fields:
                    tags.update(
                        str(v)
                        for v in getattr(member.model_fields[tag_field].annotation, "__args__", ())
                    )
    return tags


_UNION_TAGS = _collect_union_tags()
