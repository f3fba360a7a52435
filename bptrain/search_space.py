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

Distributions, for a search with Optuna (``bptrain sweep --search``): an axis whose text is
``uniform(LOW,HIGH)``, ``loguniform(LOW,HIGH)``, ``int(LOW,HIGH)`` or ``choice(V1,V2,...)`` is
parsed by ``parse_distribution`` into an ``Axis`` of that ``kind``. ``choice`` lists values like
a grid axis (a grid runs them all); the ranges only a search can sample (``grid`` refuses them).
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


# Distributions, for a search (bptrain sweep --search): KEY=NAME(ARGS). A grid can enumerate
# only `choice`; the others are drawn by Optuna (bptrain/search.py).
DISTRIBUTIONS = {
    "uniform": "uniform(LOW,HIGH)",
    "loguniform": "loguniform(LOW,HIGH) with 0 < LOW",
    "int": "int(LOW,HIGH) with integers",
    "choice": "choice(V1,V2,...)",
}
_DISTRIBUTION = re.compile(r"\s*([A-Za-z_]\w*)\s*\((.*)\)\s*", re.S)
# names people reach for (numpy, ray tune, hyperopt, optuna's own): a clear error, not a string
_MISSPELT = {
    "randint", "log_uniform", "loguniform_int", "lograndint", "normal", "range", "randn",
    "categorical", "choices", "float", "integer", "qloguniform", "quniform", "uniform_int",
}  # fmt: skip
_EXAMPLES = {
    "uniform": "uniform(0.0,0.5)",
    "loguniform": "loguniform(1e-4,1e-1)",
    "int": "int(1,4)",
}


@dataclass(frozen=True)
class Axis:
    """One swept config key and the values it takes, each a YAML text as written.

    ``kind`` is ``grid`` (V1,V2,...), ``choice`` (choice(V1,V2,...): the same values, for a search
    a categorical) or a range drawn by a search: ``uniform``, ``loguniform``, ``int`` (low, high)."""

    key: str
    values: tuple[str, ...]
    kind: str = "grid"
    low: float = 0.0
    high: float = 0.0

    @property
    def is_range(self) -> bool:
        """A distribution over a range: only a search can sample it, a grid cannot list it."""
        return self.kind in ("uniform", "loguniform", "int")

    @property
    def spec(self) -> str:
        """The axis as text, canonical (a search's study remembers it to refuse a changed space)."""
        if self.is_range:
            return f"{self.kind}({self.low:g},{self.high:g})"
        return (
            f"choice({','.join(self.values)})" if self.kind == "choice" else ",".join(self.values)
        )

    @property
    def overrides(self) -> list[str]:
        """One ``KEY=VALUE`` override per value, for ``load_config``."""
        if self.is_range:
            raise UserError(
                f"sweep axis '{self.key}={self.spec}' is a distribution: a grid cannot list its "
                "values. Add --search random or --search tpe (with --trials N), or list values: "
                f"{self.key}=V1,V2,..."
            )
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


def parse_distribution(key: str, text: str, where: str = "sweep axis") -> Axis | None:
    """``loguniform(1e-4,1e-1)`` and the like -> an ``Axis``; None when text is a list of values."""
    import yaml

    from bptrain.safe_yaml import safe_load

    match = _DISTRIBUTION.fullmatch(text)
    name = match.group(1) if match is not None else ""
    if name.lower() in _MISSPELT or (name not in DISTRIBUTIONS and name.lower() in DISTRIBUTIONS):
        raise UserError(
            f"{where} '{key}={text}': unknown distribution '{match.group(1)}'. "
            f"Use one of: {', '.join(DISTRIBUTIONS.values())}."
        )
    if match is None or match.group(1) not in DISTRIBUTIONS:
        return None
    kind, inner = match.group(1), match.group(2)
    form = f"{key}={DISTRIBUTIONS[kind]}"
    try:
        parts = split_values(inner)
    except ValueError as err:
        raise UserError(f"{where} '{key}={text}': {err}; expected {form}.") from None
    if kind == "choice":
        if len(parts) < 2 or not all(parts):
            raise UserError(f"{where} '{key}={text}': choice needs two or more values: {form}.")
        return Axis(key, tuple(_readable(key, text, parts, where)), kind="choice")
    try:
        numbers = [safe_load(p) for p in parts]
        numbers = [float(n) if isinstance(n, str) else n for n in numbers]
    except (yaml.YAMLError, ValueError):
        numbers = []
    if (
        len(numbers) != 2
        or not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers)
        or not numbers[0] < numbers[1]
        or (kind == "loguniform" and numbers[0] <= 0)
        or (kind == "int" and not all(float(n).is_integer() for n in numbers))
    ):
        raise UserError(
            f"{where} '{key}={text}': expected {form} and LOW < HIGH, e.g. {key}={_EXAMPLES[kind]}."
        )
    return Axis(key, (), kind=kind, low=float(numbers[0]), high=float(numbers[1]))


def parse_axis(argument: str, where: str = "sweep axis") -> Axis:
    """``"model.cell=rnn,lstm"`` -> ``Axis("model.cell", ("rnn", "lstm"))``, or a ``UserError``."""
    key, sep, text = argument.partition("=")
    if not sep or not KEY.fullmatch(key):
        raise UserError(f"{where} '{argument}': {SYNTAX}.")
    distribution = parse_distribution(key, text, where)
    if distribution is not None:
        return distribution
    try:
        values = split_values(text)
    except ValueError as err:
        raise UserError(f"{where} '{argument}': {err}; {SYNTAX}.") from None
    if any(not value for value in values):
        raise UserError(f"{where} '{argument}': a value is empty (write null for None); {SYNTAX}.")
    return Axis(key, tuple(_readable(key, text, values, where)))


def _readable(key: str, text: str, values: list[str], where: str) -> list[str]:
    """`values`, each of which reads as YAML within bptrain's bounds (bptrain.safe_yaml).

    Each value becomes a KEY=VALUE override later; one that is not YAML, or a YAML alias bomb,
    is a usage error now, before any run starts, not one failed run per grid point."""
    import yaml

    from bptrain.safe_yaml import load_yaml

    for value in values:
        try:
            load_yaml(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err)
            shown = value if len(value) <= 60 else value[:57] + "..."
            raise UserError(
                f"{where} '{key}={text[:80]}': the value {shown!r} is not valid YAML ({problem})."
            ) from None
    return values


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
