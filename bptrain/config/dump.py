"""Writing configs out: plain data, YAML with every default spelled out, and the JSON Schema."""

from __future__ import annotations

from typing import Any

import yaml

from bptrain.config.schema import Config, ordered_keys


class _Dumper(yaml.SafeDumper):
    """Block-style sections, flow-style lists of plain values ([64, 64])."""


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    flat = all(not isinstance(v, dict | list) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def _in_reading_order(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _in_reading_order(value[k]) for k in ordered_keys(value)}
    return value


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain JSON-compatible data, variant names first (see ``ordered_keys``)."""
    return _in_reading_order(config.model_dump(mode="json"))


def to_yaml(config: Config) -> str:
    """The resolved config, every default spelled out, as YAML (for config.yaml and `config show`)."""
    return yaml.dump(to_dict(config), Dumper=_Dumper, sort_keys=False, width=100)


def json_schema() -> dict[str, Any]:
    return Config.model_json_schema()
