"""The code stays readable: the loop fits in one sitting, no function grows into a maze."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bptrain"


def _functions() -> dict[str, int]:
    lengths = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
                lengths[name] = node.end_lineno - node.lineno + 1  # type: ignore[operator]
    return lengths


def test_fit_reads_in_one_sitting():
    (fit,) = [
        n
        for name, n in _functions().items()
        if name.startswith("bptrain/train.py") and name.endswith(" fit")
    ]
    assert fit <= 100, f"train.fit is {fit} lines: move a part into a named helper"


def test_no_function_is_over_120_lines():
    long = {name: n for name, n in _functions().items() if n > 120}
    assert not long, f"split these into named helpers: {long}"
