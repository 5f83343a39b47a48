"""YAML text → plain Python values, remembering where every key and value came from.

We compose the node tree ourselves (rather than using a constructor) so that: every key and value
keeps its line and column; duplicate keys, recursive aliases and oversized documents become located
errors instead of exceptions; and each scalar keeps its original text, so ``version: 1.10`` reads as
``"1.10"`` where a string is expected (as the Go tool reads it), not as the float 1.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from moat.errors import Located

Path = tuple[str | int, ...]

# Protects against alias "billion laughs" expansion and absurd files.
MAX_VALUES = 100_000
MAX_DEPTH = 64

_TAG = "tag:yaml.org,2002:"


class YamlInt(int):
    """An int that remembers how it was written."""

    text: str

    def __new__(cls, value: int, text: str) -> YamlInt:
        obj = super().__new__(cls, value)
        obj.text = text
        return obj


class YamlFloat(float):
    """A float that remembers how it was written (``1.10`` is not ``1.1`` for a version)."""

    text: str

    def __new__(cls, value: float, text: str) -> YamlFloat:
        obj = super().__new__(cls, value)
        obj.text = text
        return obj


@dataclass
class Marks:
    """Where each path's key and value start (1-based line and column)."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path, *, prefer_key: bool = False) -> tuple[int | None, int | None]:
        """The closest known position for ``path`` (falling back to its nearest ancestor)."""
        probe = path
        while True:
            first, second = (self.keys, self.values) if prefer_key else (self.values, self.keys)
            mark = first.get(probe) or second.get(probe)
            if mark:
                return mark
            if not probe:
                return None, None
            probe = probe[:-1]


class YamlProblem(Exception):
    """The text is not a usable YAML document; carries a located problem."""

    def __init__(self, problem: Located) -> None:
        super().__init__(problem.message)
        self.problem = problem


def load_document(text: str) -> tuple[Any, Marks]:
    """Parse one YAML document into plain values (dict/list/str/int/float/bool/None) and marks."""
    try:
        root = YAML(typ="rt").compose(text)
    except ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        line, column = _line_column(text, exc.position)
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise YamlProblem(Located((), f"character U+{code:04X} is not allowed in YAML", line, column)) from None
    except RecursionError:  # ruamel composes recursively: absurd nesting exhausts the stack
        raise YamlProblem(Located((), f"nested more than {MAX_DEPTH} levels deep")) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        where = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise YamlProblem(Located((), f"YAML syntax error: {problem}", *where)) from None
    except YAMLError as exc:  # e.g. a second document in the stream
        raise YamlProblem(Located((), f"YAML error: {exc}")) from None
    marks = Marks()
    if root is None:
        return None, marks
    builder = _Builder(marks)
    return builder.build(root, (), 0), marks


def _line_column(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _position(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, marks: Marks) -> None:
        self.marks = marks
        self.count = 0
        self.active: set[int] = set()  # nodes on the current path, to catch recursive aliases
        self.merging = 0  # inside a merge source: never overwrite the marks of explicit keys

    def fail(self, node: Node, path: Path, message: str) -> YamlProblem:
        line, column = _position(node)
        return YamlProblem(Located(path, message, line, column))

    def build(self, node: Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise self.fail(node, path, f"document too large (more than {MAX_VALUES} values)")
        if depth > MAX_DEPTH:
            raise self.fail(node, path, f"nested more than {MAX_DEPTH} levels deep")
        self.marks.values.setdefault(path, _position(node))
        if isinstance(node, ScalarNode):
            return _scalar(node)
        if id(node) in self.active:
            raise self.fail(node, path, "recursive alias: a value refers to itself")
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self.mapping(node, path, depth)
            raise self.fail(node, path, f"unsupported YAML node {type(node).__name__}")
        finally:
            self.active.discard(id(node))

    def mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        explicit: set[str] = set()
        merged: list[MappingNode] = []
        for key_node, value_node in node.value:
            if str(key_node.tag) == _TAG + "merge":
                merged.extend(self.merge_sources(value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                raise self.fail(key_node, path, "a mapping key must be a plain value, not a list or mapping")
            key = str(key_node.value)
            if key in explicit:
                line, _ = self.marks.keys[(*path, key)]
                raise self.fail(key_node, (*path, key), f"duplicate key '{key}' (first defined on line {line})")
            explicit.add(key)
            if self.merging:
                self.marks.keys.setdefault((*path, key), _position(key_node))
            else:
                self.marks.keys[(*path, key)] = _position(key_node)
            out[key] = self.build(value_node, (*path, key), depth + 1)
        # Merge keys ("<<: *defaults") fill in only what the mapping does not set itself; merged
        # keys are located at the anchor that supplied them.
        for source in merged:
            if id(source) in self.active:
                raise self.fail(source, path, "recursive merge: a mapping merges itself")
            self.active.add(id(source))
            self.merging += 1
            try:
                for key, value in self.mapping(source, path, depth).items():
                    out.setdefault(key, value)
            finally:
                self.merging -= 1
                self.active.discard(id(source))
        return out

    def merge_sources(self, node: Node, path: Path) -> list[MappingNode]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        mappings = [s for s in sources if isinstance(s, MappingNode)]
        if len(mappings) != len(sources):
            raise self.fail(node, path, "'<<' (merge) needs a mapping or a list of mappings")
        return mappings


def _scalar(node: ScalarNode) -> Any:
    text = str(node.value)
    tag = str(node.tag)
    if node.style not in (None, ""):  # quoted or block scalars are always strings
        return text
    if tag == _TAG + "null":
        return None
    if tag == _TAG + "bool":
        return text.lower() == "true"
    if tag == _TAG + "int":
        value = _to_int(text)
        return text if value is None else YamlInt(value, text)
    if tag == _TAG + "float":
        number = _to_float(text)
        return text if number is None else YamlFloat(number, text)
    return text


def _to_int(text: str) -> int | None:
    clean = text.replace("_", "")
    for base in (0, 10):  # base 10 takes what base 0 refuses: leading zeros such as 0123
        try:
            return int(clean, base)
        except ValueError:
            continue
    return None


def _to_float(text: str) -> float | None:
    lowered = text.lower().replace("_", "")
    if lowered in (".inf", "+.inf"):
        return math.inf
    if lowered == "-.inf":
        return -math.inf
    if lowered == ".nan":
        return math.nan
    try:
        return float(lowered)
    except ValueError:
        return None


def scalar_text(value: Any) -> str | None:
    """The original text of a scalar (for fields that want a string), or None for non-scalars."""
    if isinstance(value, YamlInt | YamlFloat):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None
