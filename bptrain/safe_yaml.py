"""The one YAML reader of bptrain: safe, YAML 1.2 scalars, and bounded.

Every YAML bptrain reads goes through here: config files and their ``base:`` files, ``KEY=VALUE``
overrides, ``${env:VAR}`` values, sweep and search axes, and the config.yaml of a run directory.

- Safe: ``SafeConstructor`` only; a ``!!python/...`` tag is an error, never an object.
- YAML 1.2 scalars: ``3e-4`` is a float and ``off``/``yes`` are strings (PyYAML reads YAML 1.1).
- Bounded, because a config holds a few hundred settings, and a hostile or mistaken one (a 373-byte
  "billion laughs" alias bomb, megabytes of data pasted inline) must be refused in well under a
  second instead of taking minutes and gigabytes: at most ``MAX_NODES`` values once every alias
  is expanded (an alias counts its anchor's whole subtree), ``MAX_DEPTH`` levels of nesting (also
  through aliases), no alias inside its own anchor (an infinite structure), and files of at most
  ``max_config_bytes()`` (10 MiB, ``$BPTRAIN_MAX_CONFIG_BYTES``).

libyaml (PyYAML's C parser, in every PyYAML wheel) does the scanning when present, 10-50x faster
than PyYAML's pure-Python scanner (a 9 MB file of comments: 0.3 s instead of 17 s); the composer,
which counts, stays in Python. Without libyaml the pure-Python parser reads the same documents.
"""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from bptrain.errors import UserError

MAX_CONFIG_BYTES_ENV = "BPTRAIN_MAX_CONFIG_BYTES"
DEFAULT_MAX_CONFIG_BYTES = 10 * 2**20
MAX_NODES = 20_000
"""Values in one document after expanding YAML aliases (each use of *anchor counts its subtree)."""
MAX_DEPTH = 64
"""Levels of nesting (a config is about 5 deep; class_path init_args a few more)."""


class YamlTooBig(yaml.YAMLError):
    """A document beyond the bounds above; its text is the whole message (with the line)."""


def max_config_bytes() -> int:
    """The size limit of a config file (and of one override): 10 MiB, or $BPTRAIN_MAX_CONFIG_BYTES."""
    raw = os.environ.get(MAX_CONFIG_BYTES_ENV)
    if raw is None:
        return DEFAULT_MAX_CONFIG_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit <= 0:
        raise UserError(
            f"${MAX_CONFIG_BYTES_ENV} must be a positive number of bytes, not {raw!r} "
            f"(unset it for the default, {DEFAULT_MAX_CONFIG_BYTES:,})."
        )
    return limit


def too_big_message(what: str, size: int, limit: int) -> str:
    return (
        f"{what} is {size:,} bytes, more than a config may be ({limit:,}; set "
        f"${MAX_CONFIG_BYTES_ENV} to change it). A config holds settings: keep data in files "
        "that data.path names."
    )


def read_text(path: Path) -> str:
    """A YAML file's text, refused unread (``YamlTooBig``) when it is over the size limit."""
    limit = max_config_bytes()
    size = path.stat().st_size if path.is_file() else 0
    if size > limit:
        raise YamlTooBig(too_big_message(str(path), size, limit))
    with path.open(encoding="utf-8") as handle:
        text = handle.read(limit + 1)  # a file that grew since stat, or a FIFO: still bounded
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise YamlTooBig(too_big_message(str(path), size, limit))
    return text


if getattr(yaml, "__with_libyaml__", False):
    from yaml.cyaml import CParser

    class _Parser(CParser):
        """libyaml's scanner and parser: events at C speed (and its own flow-nesting limit)."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)

else:  # pragma: no cover - every PyYAML wheel ships libyaml

    class _Parser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


class YamlLoader(Composer, _Parser, SafeConstructor, Resolver):
    """``yaml.SafeLoader``'s behaviour (no Python objects, ever) with YAML 1.2 scalars, bounded.

    The Python composer (first in the MRO, ahead of the C parser's own) counts the values it
    composes, an alias counting its anchor's whole subtree, and the depth, an alias adding its
    anchor's: what loading, indexing and validating would walk.
    """

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.expanded = 0
        self.depth = 0
        self._measured: dict[int, tuple[int, int]] = {}
        self._open: set[str] = set()  # anchors being composed: an alias to one is a cycle

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self.anchors:  # else the composer reports the undefined alias
                node = self.anchors[event.anchor]
                if event.anchor in self._open:
                    raise YamlTooBig(
                        f"{self._line()}the alias *{event.anchor} is inside its own anchor "
                        f"&{event.anchor}: an infinite config"
                    )
                size, depth = measure(node, self._measured)
                self._grow(size, self.depth + depth)
            return super().compose_node(parent, index)
        self._grow(1, self.depth + 1)
        self.depth += 1
        if event.anchor is not None:
            self._open.add(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1
            self._open.discard(event.anchor)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value its tag cannot take (``2024-13-45``, ``!!int abc``, an integer of 5,000
        digits) is a YAML error at its line, not a ValueError from deep inside PyYAML."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:
            value = reprlib.repr(node.value) if isinstance(node, yaml.ScalarNode) else "a value"
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"cannot read {value} as {node.tag.rsplit(':', 1)[-1]}: {err}",
                node.start_mark,
            ) from None

    def _grow(self, nodes: int, depth: int) -> None:
        self.expanded += nodes
        if self.expanded > MAX_NODES:
            raise YamlTooBig(
                f"{self._line()}the config expands to more than {MAX_NODES:,} values (a config "
                "holds settings, not data: keep data in data.path files; a YAML alias (*name) "
                "repeated inside other aliases multiplies its values)"
            )
        if depth > MAX_DEPTH:
            raise YamlTooBig(
                f"{self._line()}the YAML is nested more than {MAX_DEPTH} levels deep, too deep to "
                "be a config"
            )

    def _line(self) -> str:
        mark = self.peek_event().start_mark
        return f"line {mark.line + 1}: " if mark is not None else ""


# YAML 1.1 also reads yes/no/on/off as booleans, which turns `progress: off` into False.
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.1 (PyYAML) reads `3e-4` as a string; users write it, so resolve floats as YAML 1.2 does.
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def measure(node: yaml.Node, memo: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(values, depth) that a composed `node` stands for once every alias inside it is expanded.

    Memoised per node, so a bomb is measured in time linear in its text; a subtree beyond
    MAX_NODES is not walked further (the caller refuses it)."""
    key = id(node)
    if key in memo:
        return memo[key]
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    size, depth = 1, 0
    for child in children:
        child_size, child_depth = measure(child, memo)
        size, depth = size + child_size, max(depth, child_depth)
        if size > MAX_NODES:
            break
    memo[key] = (size, depth + 1)
    return memo[key]


def load_yaml(
    text: str, before_construct: Callable[[yaml.Node], None] | None = None
) -> tuple[Any, yaml.Node | None]:
    """(plain Python values, the root node) of one YAML document, within the bounds above.

    ``before_construct`` sees the composed node as written: constructing flattens merge keys
    (``<<: *base``) into the mapping node, after which a merged key that the mapping overrides
    would look like a key given twice. Raises ``yaml.YAMLError`` (``YamlTooBig`` beyond the
    bounds; a ``ConstructorError`` for text that is not UTF-8 or a value its tag cannot take)
    for the caller to word."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # libyaml encodes strictly: lone surrogates from argv/env
        raise yaml.constructor.ConstructorError(
            problem=f"the text is not valid UTF-8 (undecodable byte at character {err.start + 1})"
        ) from None
    loader = YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        if before_construct is not None:
            before_construct(node)
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return data, node


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 scalars and the bounds above."""
    return load_yaml(text)[0]
