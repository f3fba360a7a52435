"""Config composition: ``base:`` includes, several files in order, ``${env:VAR}``, variant shorthands.

The loader hands this module parsed files and gets back one mapping plus where each value came
from (``origins``: key path -> "file, line N" or "command-line override '...'"), so that every
error, and ``bptrain config show --origins``, names the file and line a value came from:

- ``base: other.yaml`` (or a list) at the top of a file: those files first, deep-merged in order,
  then this file on top (later wins; lists and values replace, mappings merge). Paths are relative
  to the including file. A circular include or a missing file is an error naming the ``base:`` line.
- several files on the command line (``bptrain fit base.yaml small.yaml lr.yaml``) merge left to
  right the same way; then the ``KEY=VALUE`` overrides apply.
- ``${env:VAR}`` and ``${env:VAR,default}`` in any string value; a value that is only the
  placeholder is read as YAML (``lr: ${env:LR,3e-4}`` is a float). Unset without a default is an
  error naming the file and line.
- a variant section given as a bare name is shorthand for its name: ``loss: mse`` is
  ``loss: {name: mse}``, ``data: digits`` is ``data: {source: digits}``. When a later file or an
  override changes a variant's name, the options the new variant does not have are dropped, with a
  one-line note (``scheduler.name=none`` after ``warmup_cosine`` drops ``warmup_steps``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bptrain.config.base import KeyPath, usable_path
from bptrain.config.schema import Config, models_in
from bptrain.safe_yaml import MAX_NODES

MAX_FILES = 100  # config files one config reads through base: (each once is a few)
Parsed = tuple[Any, dict[KeyPath, int]]  # (data, {key path: line}) as the loader's parse_yaml gives

# the sections chosen by a tag, and the tag's key
VARIANTS = {
    "data": "source",
    "model": "name",
    "loss": "name",
    "optimizer": "name",
    "scheduler": "name",
}
ENV = re.compile(r"\$\{([^}]*)\}")
_printed_notes: set[str] = set()


class Layers:
    """Values merged layer by layer, with the origin of each and the notes to show once."""

    def __init__(
        self, error: Callable[[str], Exception], fields: Callable[[str, Any], set[str] | None]
    ):
        self.data: dict[str, Any] = {}
        self.origins: dict[KeyPath, str] = {}
        self.notes: list[str] = []
        self.error = error  # ConfigError: exit 2 with the message
        self.fields = fields  # (section, tag value) -> the options that variant has
        self.files_read = 0
        self.values_read = 0  # bounded like one file: includes must not multiply (a diamond bomb)

    # ------------------------------------------------------------------ files
    def add_file(
        self, path: Path, read: Callable[[Path], Parsed], stack: tuple[Path, ...] = ()
    ) -> None:
        """Merge one file, its bases first."""
        data, lines = read(path)
        self.files_read += 1
        self.values_read += len(lines)
        many = "base: [a.yaml, a.yaml, ...] in files that include each other? Include each once"
        if self.files_read > MAX_FILES:
            raise self.error(f"{path}: more than {MAX_FILES} config files read ({many}).")
        if self.values_read > MAX_NODES:
            raise self.error(
                f"{path}: the config and its base: files hold more than {MAX_NODES:,} values "
                f"(a config holds settings: keep data in data.path files; or {many})."
            )
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error(
                f"{path}: the top level must be a mapping of sections (seed, data, model, ...), "
                f"not {type(data).__name__}."
            )
        stack = (*stack, path.resolve())
        bases = data.pop("base", None)
        if bases is not None:
            where = f"{path}, line {lines.get(('base',), 1)}"
            names = [bases] if isinstance(bases, str) else bases
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise self.error(
                    f"{where}: base: expected a file name or a list of them, e.g. base: common.yaml "
                    "or base: [common.yaml, data.yaml]."
                )
            for name in names:
                try:
                    included = usable_path(Path(name))
                except ValueError as err:
                    raise self.error(f"{where}: base: {shown(name)} {err}.") from None
                assert included is not None
                if not included.is_absolute():
                    included = path.parent / included
                if included.resolve() in stack:
                    chain = " -> ".join(p.name for p in (*stack, included.resolve()))
                    raise self.error(
                        f"{where}: base: {name} includes a file that is already being read "
                        f"({chain}): circular includes. Remove one of these base: entries."
                    )
                if not included.is_file():
                    raise self.error(
                        f"{where}: base: {name} not found (looked for {included.resolve()}, relative to "
                        f"{path}). Fix the path or remove it from base:."
                    )
                self.add_file(included, read, stack)
        self.merge(data, {k: f"{path}, line {v}" for k, v in lines.items()}, str(path))

    def merge(self, data: dict[str, Any], origins: dict[KeyPath, str], source: str) -> None:
        origins = dict(origins)
        for section, value in data.items():
            if section in VARIANTS and isinstance(value, str) and (section,) in origins:
                origins[(section, VARIANTS[section])] = origins[(section,)]  # `loss: mse`
        data = {k: self._expand(k, v) for k, v in data.items()}
        for section, value in data.items():
            old = self.data.get(section)
            if isinstance(value, dict) and isinstance(old, dict):
                self.data[section] = _deep_merge(old, value)
                tag = (section, VARIANTS.get(section, ""))
                self._drop_stale(section, old, value, origins.get(tag) or source)
            else:
                self.data[section] = value
                self._forget(section)
        self.origins.update(origins)

    # ------------------------------------------------------------------ overrides
    def override(self, keys: list[str], value: Any, text: str) -> None:
        """Apply one KEY=VALUE (keys already split) with the variant rules of a file layer."""
        text = shown(text)  # as messages quote it
        origin = f"command-line override '{text}'"
        section = keys[0]
        if len(keys) == 1:  # a whole section replaces the old one (as it always has)
            self.data[section] = self._expand(section, value)
            self._forget(section)
            self.origins[(section,)] = origin
            return
        nested: Any = value
        for key in reversed(keys[1:]):
            nested = {key: nested}
        old = self.data.get(section)
        if old is not None and not isinstance(old, dict):
            old = self._expand(section, old)
            if not isinstance(old, dict):
                raise self.error(
                    f"override '{text}': {section} is a value ({shown(repr(old))}), not a section with keys."
                )
            self.data[section] = old
        node = self.data.setdefault(section, {})
        for depth, key in enumerate(keys[1:-1], start=1):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                dotted = ".".join(keys[: depth + 1])
                raise self.error(
                    f"override '{text}': {dotted} is a value ({shown(repr(child))}), not a section with keys."
                )
            node = child
        before = dict(self.data[section])
        node[keys[-1]] = value
        if len(keys) == 2:
            self._drop_stale(section, before, {keys[-1]: value}, f"override {text}")
        self._forget(*keys)  # it replaced everything under its key: errors there are the override's
        self.origins[tuple(keys)] = origin

    # ------------------------------------------------------------------ variants
    def _expand(self, section: str, value: Any) -> Any:
        """``loss: mse`` -> ``{name: mse}`` for variant sections."""
        if section in VARIANTS and isinstance(value, str):
            return {VARIANTS[section]: value}
        return value

    def _drop_stale(
        self, section: str, old: dict[str, Any], new: dict[str, Any], source: str
    ) -> None:
        """The variant's name changed: drop the old options the new variant does not have."""
        tag = VARIANTS.get(section)
        merged = self.data[section]
        if tag is None or tag not in new or old.get(tag, new[tag]) == new[tag]:
            return
        allowed = self.fields(section, merged.get(tag))
        if allowed is None:
            return
        dropped = [k for k in merged if k not in allowed and k in old and k not in new]
        for key in dropped:
            del merged[key]
            self._forget(section, key)
        if dropped:
            keys = ", ".join(f"{section}.{k}" for k in dropped)
            self.note(
                f"note: {source} changes {section}.{tag} from {old[tag]} to {new[tag]}, which has "
                f"no {keys}: dropped."
            )

    def _forget(self, *prefix: str) -> None:
        for key in [k for k in self.origins if k[: len(prefix)] == prefix and len(k) > len(prefix)]:
            del self.origins[key]

    def note(self, text: str) -> None:
        self.notes.append(text)

    # ------------------------------------------------------------------ ${env:...}
    def interpolate(self, parse_value: Callable[[str], Any]) -> None:
        """Replace ${env:VAR} and ${env:VAR,default} everywhere, naming the line when unset."""
        self.data = self._interpolate(self.data, (), parse_value)

    def _interpolate(self, value: Any, path: KeyPath, parse_value: Callable[[str], Any]) -> Any:
        if isinstance(value, dict):
            return {k: self._interpolate(v, (*path, k), parse_value) for k, v in value.items()}
        if isinstance(value, list):
            return [self._interpolate(v, (*path, i), parse_value) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        whole = ENV.fullmatch(value.strip())
        text = ENV.sub(lambda m: self._env(m.group(1), path), value)
        return parse_value(text) if whole else text

    def _env(self, inner: str, path: KeyPath) -> str:
        where = self.where(path)
        dotted = ".".join(str(p) for p in path)
        if not inner.startswith("env:"):
            raise self.error(
                f"{where}: {dotted}: ${{{inner}}}: only environment variables are interpolated; "
                f"write ${{env:{inner}}} (or ${{env:{inner},default}})."
            )
        name, comma, default = inner[4:].partition(",")
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise self.error(
                f"{where}: {dotted}: ${{{inner}}}: expected ${{env:NAME}} or ${{env:NAME,default}} "
                "with NAME a variable name."
            )
        if name in os.environ:
            return os.environ[name]
        if comma:
            return default.strip()
        raise self.error(
            f"{where}: {dotted}: environment variable {name} is not set (${{env:{name}}}). "
            f"Set it (export {name}=...) or give a default: ${{env:{name},VALUE}}."
        )

    def where(self, path: KeyPath) -> str:
        for end in range(len(path), 0, -1):
            if path[:end] in self.origins:
                return self.origins[path[:end]]
        return "config"

    def print_notes(self) -> None:
        for text in self.notes:
            if text not in _printed_notes:  # a sweep loads the same config many times
                _printed_notes.add(text)
                print(text, file=sys.stderr)


def shown(text: str, width: int = 80) -> str:
    """An override (or a value) as an error message quotes it: cut to `width` characters."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _deep_merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def split_files(args: list[str] | tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """Extra config files among the command line's overrides: a word without '=' ending in .yaml/.yml."""
    files, overrides = [], []
    for arg in args:
        if "=" not in arg and arg.lower().endswith((".yaml", ".yml")):
            files.append(Path(arg))
        else:
            overrides.append(arg)
    return files, overrides


def variant_fields(section: str, tag_value: Any) -> set[str] | None:
    """The options of one variant of a section (``scheduler`` named ``none``), None if unknown."""
    tag = VARIANTS.get(section)
    field = Config.model_fields.get(section)
    if tag is None or field is None:
        return None
    for member in models_in(field.annotation):
        choices = getattr(member.model_fields.get(tag), "annotation", None)
        if tag_value in (getattr(choices, "__args__", None) or ()):
            return set(member.model_fields)
    return None


def origin_lines(
    resolved: dict[str, Any], origins: dict[KeyPath, str], raw: dict[str, Any]
) -> list[str]:
    """``key: value  # where from`` for every value of the resolved config (config show --origins).

    A value is from the file and line (or override) that set it; a value inside a section given
    whole (``loss: mse``, ``'optimizer={name: sgd}'``) is from where the section was given; the
    rest are defaults."""
    import json

    rows = []
    for path, value in _leaves(resolved, ()):
        if path in origins:
            where = origins[path]
        elif _has(raw, path):
            where = next(
                (
                    origins[path[:end]]
                    for end in range(len(path) - 1, 0, -1)
                    if path[:end] in origins
                ),
                "default",
            )
        else:
            where = "default"
        dotted = ".".join(str(p) for p in path)
        text = (
            json.dumps(value)
            if isinstance(value, list | dict | bool) or value is None
            else str(value)
        )
        rows.append((f"{dotted}: {text}", where))
    width = max((len(left) for left, _ in rows), default=0)
    return [f"{left:<{width}}  # {where}" for left, where in rows]


def _leaves(data: Any, path: KeyPath) -> list[tuple[KeyPath, Any]]:
    if isinstance(data, dict) and data:
        out = []
        for key, value in data.items():
            out.extend(_leaves(value, (*path, key)))
        return out
    return [(path, data)]


def _has(data: Any, path: KeyPath) -> bool:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True
