"""The sweep grammar: ``KEY=V1,V2,...`` axes, the one syntax of ``bptrain sweep`` and ``grad-inspect``.

An axis is one command-line argument: a dotted config key, ``=``, and one or more
values separated by commas. Each value is kept as written and later parsed as YAML
exactly like a ``KEY=VALUE`` override (``optimizer.lr=1e-3,3e-4`` gives two floats).
A comma splits values only at the top level: inside brackets, braces, parentheses or
quotes it belongs to the value, so ``model.hidden=[64,64],[128]`` is two values and
``data.path='a,b.csv'`` (quoted for the shell as ``"data.path='a,b.csv'"``) is one.

``parse_axis`` turns one argument into an ``Axis`` (or a ``UserError`` that says what
is wrong and shows the syntax); ``grid`` is the product of several axes, first axis
slowest. The commands decide what a grid point means: a training run for ``sweep``,
an inspection for ``grad-inspect``.

Extending the grammar (e.g. ``optimizer.lr=loguniform(1e-4,1e-1)`` for a search with
Optuna): parentheses already keep such a value whole, so a new kind of domain only
needs a parser for the value text, next to ``split_values``, and a field on ``Axis``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from bptrain.errors import UserError

# The key syntax of a KEY=VALUE override (see bptrain.config's parse_override).
KEY = re.compile(r"[A-Za-z_]\w*(\.\w+)*")
SYNTAX = (
    "expected KEY=V1,V2,... with a dotted key, e.g. model.activation=relu,tanh "
    "or model.hidden=[64,64],[128] (quote a value to keep a comma in it: 'a,b')"
)
OPENING, CLOSING = "[{(", "]})"


@dataclass(frozen=True)
class Axis:
    """One swept config key and the values it takes, each a YAML text as written."""

    key: str
    values: tuple[str, ...]

    @property
    def overrides(self) -> list[str]:
        """One ``KEY=VALUE`` override per value, for ``load_config``."""
        return [f"{self.key}={value}" for value in self.values]


def split_values(text: str) -> list[str]:
    """Split ``V1,V2,...`` at top-level commas; raises ``ValueError`` on an unclosed bracket or quote."""
    parts: list[str] = []
    depth, quote, current = 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in OPENING:
            depth += 1
        elif char in CLOSING:
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    if quote or depth != 0:
        raise ValueError(
            f"unclosed {quote or 'bracket'}" if quote or depth > 0 else "unmatched ')'"
        )
    parts.append(current.strip())
    return parts


def is_multi_valued(argument: str) -> bool:
    """Whether a ``KEY=...`` argument lists several values (a top-level comma), i.e. is an axis."""
    _, sep, values = argument.partition("=")
    try:
        return bool(sep) and len(split_values(values)) > 1
    except ValueError:
        return False  # not an axis: load_config reports the malformed override


def parse_axis(argument: str, where: str = "sweep axis") -> Axis:
    """``"model.cell=rnn,lstm"`` -> ``Axis("model.cell", ("rnn", "lstm"))``, or a ``UserError``."""
    key, sep, text = argument.partition("=")
    if not sep or not KEY.fullmatch(key):
        raise UserError(f"{where} '{argument}': {SYNTAX}.")
    try:
        values = split_values(text)
    except ValueError as err:
        raise UserError(f"{where} '{argument}': {err}; {SYNTAX}.") from None
    if any(not value for value in values):
        raise UserError(f"{where} '{argument}': a value is empty (write null for None); {SYNTAX}.")
    return Axis(key, tuple(values))


def parse_axes(arguments: list[str], where: str = "sweep axis") -> list[Axis]:
    """Several axes; a key given twice is an error (list all its values in one argument)."""
    return distinct([parse_axis(argument, where) for argument in arguments], where)


def distinct(axes: list[Axis], where: str = "sweep axis") -> list[Axis]:
    """``axes`` unchanged, or a ``UserError`` when a key appears twice."""
    seen: set[str] = set()
    for axis in axes:
        if axis.key in seen:
            raise UserError(
                f"{where} '{axis.key}' is given twice; list all its values in one {axis.key}=V1,V2."
            )
        seen.add(axis.key)
    return axes


def grid(axes: list[Axis]) -> list[tuple[str, ...]]:
    """Every combination of the axes' values as ``KEY=VALUE`` overrides, first axis slowest."""
    return list(itertools.product(*(axis.overrides for axis in axes)))
