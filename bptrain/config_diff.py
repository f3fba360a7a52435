"""What differs between the configs of several runs, as dotted keys (``optimizer.lr``).

``bptrain runs`` shows these keys as its config column, ``bptrain report`` as its comparison
table and run labels. Both read configs back from run directories (plain dicts loaded from
``config.yaml``), so nothing here imports pydantic or torch.
"""

from __future__ import annotations

import json
from typing import Any


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole (they are one value: model.hidden=[64, 64])."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def differences(flat_configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Keys (first-seen order) whose value is not the same in every flattened config, each with
    every config's value (``None`` where a config lacks the key: a missing key differs).

    Values are compared as canonical JSON, so a dict's key order does not count and NaN equals NaN.
    """
    missing = object()
    keys = dict.fromkeys(key for flat in flat_configs for key in flat)
    out = {}
    for key in keys:
        values = [flat.get(key, missing) for flat in flat_configs]
        if len({_canonical(v) for v in values}) > 1:
            out[key] = [None if v is missing else v for v in values]
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)
