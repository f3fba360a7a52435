"""Reading configs: safe YAML with line numbers, ``key.path=value`` overrides, validation."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bptrain.config.base import KeyPath
from bptrain.config.compose import Layers, shown, split_files, variant_fields
from bptrain.config.error_messages import format_validation_error
from bptrain.config.schema import Config
from bptrain.errors import ConfigError, UserError
from bptrain.safe_yaml import (
    YamlTooBig,
    load_yaml,
    max_config_bytes,
    read_text,
    too_big_message,
)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse YAML safely and return (data, {key path: line number}) for error messages."""
    lines: dict[KeyPath, int] = {}
    try:
        data, _ = load_yaml(text, lambda node: _index_lines(node, (), lines, source))
    except YamlTooBig as err:
        raise ConfigError(f"{source}: {err}") from None
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        where = f"{source}, line {mark.line + 1}" if mark else source
        if "unhashable" in str(err.problem):
            raise ConfigError(
                f"{where}: a key must be a plain name, not a list or mapping."
            ) from None
        if "constructor for the tag" not in str(err.problem):  # a value its tag cannot take
            raise ConfigError(f"{where}: {err.problem}.") from None
        raise ConfigError(
            f"{where}: {err.problem}.\n  bptrain reads YAML with safe_load: Python object tags such as !!python/object "
            "are refused. Write plain values (numbers, strings, lists, mappings)."
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    return data, lines


def _index_lines(
    node: yaml.Node | None, path: KeyPath, lines: dict[KeyPath, int], source: str
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(
                    f"{source}, line {line}: a key must be a plain name, not a list or mapping."
                )
            key = key_node.value
            if key in seen:
                dotted = ".".join(str(p) for p in (*path, key))
                raise ConfigError(
                    f"{source}, line {line}: key '{dotted}' is given twice (first on line {seen[key]}); keep one."
                )
            seen[key] = line
            lines[(*path, key)] = line
            _index_lines(value_node, (*path, key), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _index_lines(item, (*path, i), lines, source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], value parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", key):
        raise ConfigError(
            f"override '{shown(text)}': expected KEY=VALUE with a dotted key, e.g. optimizer.lr=3e-4 or model.hidden=[128,128]"
        )
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_config_bytes():
        raise ConfigError(too_big_message(f"override '{shown(text)}'", size, max_config_bytes()))
    try:
        parsed = load_yaml(value)[0] if value.strip() else None
    except YamlTooBig as err:
        raise ConfigError(f"override '{shown(text)}': {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override '{shown(text)}': the value is not valid YAML ({getattr(err, 'problem', err)})"
        ) from None
    return key.split("."), parsed


def apply_override(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[key] = child
        if not isinstance(child, dict):
            dotted = ".".join(keys[: depth + 1])
            raise ConfigError(
                f"override '{shown(text)}': {dotted} is a value ({shown(repr(child))}), not a section with keys."
            )
        node = child
    # Changing a variant's name drops the options of the old variant only if they are unknown to the new one;
    # pydantic will still reject the leftovers with a clear message.
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (and its bases, and further files among the overrides), apply the
    ``key.path=value`` overrides, and validate the result."""
    data, origins, source = compose_config(path, overrides)
    return validate_config(data, origins, source)


def load_config_with_origins(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[Config, dict[KeyPath, str], dict[str, Any]]:
    """load_config, plus where each value came from and the raw merged values (config show --origins)."""
    data, origins, source = compose_config(path, overrides)
    raw = copy.deepcopy(data)
    return validate_config(data, origins, source), origins, raw


def compose_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[KeyPath, str], str]:
    """The merged, interpolated values before validation, their origins, and the name for errors.

    Files: CONFIG, then any ``*.yaml`` among the overrides, left to right, each after its
    ``base:`` files (config/compose.py); then the KEY=VALUE overrides in order."""
    extra, overrides = split_files(overrides)
    files = [Path(path), *extra]
    layers = Layers(ConfigError, variant_fields)
    for file in files:
        layers.add_file(file, read_file)
    for text_override in overrides:
        keys, value = parse_override(text_override)
        layers.override(keys, value, text_override)
    layers.interpolate(parse_value)
    layers.print_notes()
    data = layers.data
    data.setdefault("logging", {})
    if isinstance(data["logging"], dict) and data["logging"].get("name") is None:
        data["logging"]["name"] = "+".join(f.stem for f in files)
        layers.origins[("logging", "name")] = "default: the config file name(s)"
    return data, layers.origins, str(files[0])


def read_file(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """One config file's values and line numbers; a missing or unreadable file is a usage error."""
    try:
        text = read_text(path)
    except YamlTooBig as err:
        raise ConfigError(str(err)) from None
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config path is a directory, not a YAML file: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read config file {path}: {err}") from None
    return parse_yaml(text, str(path))


def parse_value(text: str) -> Any:
    """A scalar as YAML reads it (for ${env:...} values): 3e-4 is a float, [1, 2] a list."""
    try:
        return load_yaml(text)[0] if text.strip() else None
    except yaml.YAMLError:  # not YAML, or beyond the bounds: the text as it is
        return text


def validate_config(
    data: dict[str, Any], origins: dict[KeyPath, str] | None = None, source: str = "config"
) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, data, origins or {}, source)) from None
