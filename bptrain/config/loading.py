"""Reading configs: safe YAML with line numbers, ``key.path=value`` overrides, validation."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bptrain.config.base import KeyPath
from bptrain.config.compose import Layers, split_files, variant_fields
from bptrain.config.error_messages import format_validation_error
from bptrain.config.schema import Config
from bptrain.errors import ConfigError, UserError

# YAML 1.1 (PyYAML) reads `3e-4` as a string; users write it, so resolve floats as YAML 1.2 does.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python objects, ever) with YAML 1.2 scalars: 3e-4 is a float, `off` is a string."""


# YAML 1.1 also reads yes/no/on/off as booleans, which turns `progress: off` into False.
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def parse_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse YAML safely and return (data, {key path: line number}) for error messages."""
    try:
        node = yaml.compose(text, Loader=YamlLoader)
        lines: dict[KeyPath, int] = {}
        _index_lines(node, (), lines, source)
        data = yaml.load(text, Loader=YamlLoader) if node is not None else None
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        where = f"{source}, line {mark.line + 1}" if mark else source
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
            key = key_node.value
            line = key_node.start_mark.line + 1
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
            f"override '{text}': expected KEY=VALUE with a dotted key, e.g. optimizer.lr=3e-4 or model.hidden=[128,128]"
        )
    try:
        parsed = yaml.load(value, Loader=YamlLoader) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override '{text}': the value is not valid YAML ({getattr(err, 'problem', err)})"
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
                f"override '{text}': {dotted} is a value ({child!r}), not a section with keys."
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
        text = path.read_text(encoding="utf-8")
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
        return yaml.load(text, Loader=YamlLoader) if text.strip() else None
    except yaml.YAMLError:
        return text


def validate_config(
    data: dict[str, Any], origins: dict[KeyPath, str] | None = None, source: str = "config"
) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, data, origins or {}, source)) from None
