"""Render the README's config reference from the Pydantic models, so docs and validation never drift.

python scripts/config_reference.py          # rewrite the section of README.md between the markers
python scripts/config_reference.py --check  # exit 1 if README.md is out of date (the tests run this)
"""

from __future__ import annotations

import re
import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from bptrain import config as C

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def _members(annotation: object) -> list[type[BaseModel]]:
    return C.models_in(annotation)


def _type_name(annotation: object) -> str:
    text = (
        str(annotation).replace("typing.", "").replace("pathlib.", "").replace("NoneType", "null")
    )
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    text = re.sub(r"Annotated\[(\w+), FieldInfo\(.*?\)\]+\]", r"\1]", text)
    for noise in ("<class '", "'>"):
        text = text.replace(noise, "")
    return text.replace("|", "\\|")


def _default(field: object) -> str:
    if field.is_required():  # type: ignore[attr-defined]
        return "required"
    if field.default_factory is not None:  # type: ignore[attr-defined]
        value = field.default_factory()  # type: ignore[attr-defined]
        return f"`{value}`" if not isinstance(value, BaseModel) else "(section)"
    value = field.default  # type: ignore[attr-defined]
    return f"`{'null' if value is None else value}`"


def _row(name: str, field: object, prefix: str) -> str:
    doc = (field.description or "").replace("|", "\\|").replace("\n", " ")  # type: ignore[attr-defined]
    return f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(field)} | {doc} |"  # type: ignore[attr-defined]


def _table(model: type[BaseModel], prefix: str, only: list[str] | None = None) -> list[str]:
    names = [n for n in model.model_fields if n not in ("name", "source") or only is None]
    if only is not None:
        names = only
    rows = [
        _row(n, model.model_fields[n], prefix)
        for n in names
        if not _members(model.model_fields[n].annotation)
    ]
    return ["| key | type | default | meaning |", "|---|---|---|---|", *rows] if rows else []


def _same(a: object, b: object) -> bool:
    return a.annotation == b.annotation  # type: ignore[attr-defined]


def _is_list(annotation: object) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_is_list(a) for a in typing.get_args(annotation))


def render() -> str:
    out = [START, "", "Top-level keys:", "", *_table(C.Config, ""), ""]
    for name, field in C.Config.model_fields.items():
        members = _members(field.annotation)
        if not members:
            continue
        prefix = f"{name}[i]." if _is_list(field.annotation) else f"{name}."
        out += [f"#### `{name}`", ""] + ([field.description, ""] if field.description else [])
        # the built-in variants, then the class_path one (your own code)
        builtins = [m for m in members if "class_path" not in m.model_fields]
        customs = [m for m in members if "class_path" in m.model_fields]
        tag = next(
            (k for k in ("source", "name") if builtins and k in builtins[0].model_fields), None
        )
        if len(builtins) == 1:
            out += [*_table(builtins[0], prefix), ""]
        elif builtins:
            shared = [
                n for n in builtins[0].model_fields
                if n != tag and all(n in m.model_fields and _same(m.model_fields[n], builtins[0].model_fields[n]) for m in builtins)
            ]  # fmt: skip
            if shared:
                out += [
                    f"Keys of every built-in `{name}` variant:",
                    "",
                    *_table(builtins[0], prefix, shared),
                    "",
                ]
            for member in builtins:
                base = builtins[0].model_fields
                own = [
                    n for n in member.model_fields
                    if n != tag and (n not in shared or _default(member.model_fields[n]) != _default(base[n]) or member.model_fields[n].description != base[n].description)
                ]  # fmt: skip
                label = " / ".join(
                    str(a)
                    for a in typing.get_args(member.model_fields[tag].annotation)  # type: ignore[index]
                )
                doc = member.model_fields[tag].description or member.__doc__ or ""  # type: ignore[index]
                if "Base for every config section" in doc:
                    doc = ""
                out += [f"**`{name}.{tag}: {label}`**" + (f" — {doc}" if doc else ""), ""]
                out += [*_table(member, prefix, own), ""] if own else []
        for member in customs:
            what = "your own nn.Module" if name == "model" else "your own code"
            if builtins:
                out += [f"**`{prefix}class_path` ({what}, docs/extending.md)**", ""]
            out += [*_table(member, prefix), ""]
        for member in members:
            for sub_name, sub_field in member.model_fields.items():
                for sub in _members(sub_field.annotation):
                    out += [f"`{name}.{sub_name}`:", "", *_table(sub, f"{name}.{sub_name}."), ""]
    out.append(END)
    return "\n".join(out)


def main() -> int:
    text = README.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    updated = head + render() + tail
    if "--check" in sys.argv:
        if updated != text:
            print(
                "README.md's config reference is out of date: run python scripts/config_reference.py",
                file=sys.stderr,
            )
            return 1
        return 0
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
