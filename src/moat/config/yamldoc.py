"""YAML text → plain Python values, remembering where every key and value came from.

We compose the node tree ourselves (rather than using a constructor) so that: every key and value
keeps its line and column; duplicate keys, recursive aliases and oversized documents become located
errors instead of exceptions; and each scalar keeps its original text, so ``version: 1.10`` reads as
``"1.10"`` where a string is expected (as the Go tool reads it), not as the float 1.1.

The work is bounded before and during parsing, so a hostile file is refused in well under a second:
the text's size and its longest line are checked before ruamel sees it (ruamel slows down badly on
a line of a megabyte, even a comment), and every value built counts, including each copy an alias
or a merge key (``<<``) produces, so nested merges cannot multiply the work unnoticed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from moat.errors import Located

Path = tuple[str | int, ...]

# Protects against alias "billion laughs" expansion and absurd files. A real moat.yaml has a few
# hundred values, a few kilobytes and lines well under a hundred characters. ruamel composes dense
# YAML at about 130 KB a second, so the size bound keeps the worst file that looks valid at half a
# second; the line bound gives a long line its own message (a certificate in one line still fits).
MAX_VALUES = 20_000  # values after alias and merge expansion
MAX_DEPTH = 64
MAX_SIZE = 64 * 1024  # bytes of the file, characters of the text
MAX_LINE = 16 * 1024  # characters in one line
MAX_INT_DIGITS = 100  # longer integers read as text (Python refuses to print ints of 4300+ digits)
YAML_VERSIONS = ("1.1", "1.2")  # what ruamel (and the Go tool's yaml.v3) accept in a %YAML directive

# What ruamel counts as a line break, so a line is measured as it will.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
# Characters that a scalar may hold only through an escape ("\0", "\ud800") and that no program or
# file format can take: NUL ends a C string, a lone surrogate cannot even be encoded as UTF-8.
_UNUSABLE = re.compile("[\x00\ud800-\udfff]")
# No key of moat.yaml has a control character; refusing them keeps every path printable as it is.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# The characters that open or close a bracket, a quoted string or a comment (for _check_flow_depth).
_FLOW_CHAR = re.compile(r"""['"#\[\]{}\\\n\r]""")
_YAML_DIRECTIVE = re.compile(r"^%YAML[ \t]+(\S*)", re.MULTILINE)

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
    _check_size(text)
    _check_flow_depth(text)
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
    except (AssertionError, ValueError, TypeError, LookupError, AttributeError) as exc:
        # ruamel asserts on some input (a %YAML 1.3 directive); whatever it did not foresee is
        # still a problem with the text, not a crash.
        raise _parser_failure(text, exc) from None
    marks = Marks()
    if root is None:
        return None, marks
    builder = _Builder(marks)
    return builder.build(root, (), 0), marks


def _check_size(text: str) -> None:
    if len(text) > MAX_SIZE:
        raise YamlProblem(Located((), too_large()))
    if len(text) <= MAX_LINE:
        return
    for number, line in enumerate(_LINE_BREAK.split(text), start=1):
        if len(line) > MAX_LINE:
            raise YamlProblem(Located(
                (), f"line {number} is {len(line)} characters long; lines may be at most {MAX_LINE}", number, 1))


def too_large() -> str:
    return f"file is larger than {MAX_SIZE // 1024} KiB; a moat.yaml is a few kilobytes"


def _check_flow_depth(text: str) -> None:
    """ruamel's scanner does work in proportion to the open brackets for every token: 60,000 '['
    took it 5 s. Deeper than the builder allows is refused before it starts. Brackets inside quotes
    and comments do not count; any other miscount is generous (twice the depth the builder allows).
    One pass over the interesting characters, with no backtracking."""
    if text.count("[") + text.count("{") <= 2 * MAX_DEPTH:
        return
    depth = 0
    state = ""  # "", "'", '"' or "#"
    skip_to = -1  # an escaped character, or the second quote of ''
    for found in _FLOW_CHAR.finditer(text):
        at, char = found.start(), found.group()
        if at <= skip_to:
            continue
        if state == "#":
            state = "" if char in "\n\r" else state
        elif state == "'":
            if char == "'":
                if text.startswith("'", at + 1):
                    skip_to = at + 1
                else:
                    state = ""
        elif state == '"':
            if char == "\\":
                skip_to = at + 1
            elif char == '"':
                state = ""
        elif char in "'\"":
            state = char
        elif char == "#":
            state = "#" if at == 0 or text[at - 1] in " \t\n\r" else state
        elif char in "[{":
            depth += 1
            if depth > 2 * MAX_DEPTH:
                line, column = _line_column(text, at)
                raise YamlProblem(Located((), f"nested more than {MAX_DEPTH} levels deep", line, column))
        elif char in "]}":
            depth = max(depth - 1, 0)


def _parser_failure(text: str, exc: Exception) -> YamlProblem:
    directive = _YAML_DIRECTIVE.search(text)
    if directive and directive.group(1) not in YAML_VERSIONS:
        line = text.count("\n", 0, directive.start()) + 1
        return YamlProblem(Located(
            (), f"unsupported YAML version {directive.group(1)[:20]!r} in the %YAML directive: use"
                f" {' or '.join(YAML_VERSIONS)}, or remove the line", line, 1))
    return YamlProblem(Located((), f"YAML error: the parser could not read this file ({type(exc).__name__})"))


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

    def tick(self, node: Node, path: Path) -> None:
        """Count one unit of work; aliases and merges repeat work, so every repetition counts."""
        self.count += 1
        if self.count > MAX_VALUES:
            raise self.fail(node, path, f"document too large (more than {MAX_VALUES} values once aliases"
                                        " and merge keys are expanded)")

    def build(self, node: Node, path: Path, depth: int) -> Any:
        self.tick(node, path)
        if depth > MAX_DEPTH:
            raise self.fail(node, path, f"nested more than {MAX_DEPTH} levels deep")
        self.marks.values.setdefault(path, _position(node))
        if isinstance(node, ScalarNode):
            self.usable(node, path)
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

    def usable(self, node: ScalarNode, path: Path) -> None:
        found = _UNUSABLE.search(str(node.value))
        if found is None:
            return
        code = ord(found.group())
        what = "a NUL character (U+0000)" if code == 0 else f"a lone surrogate escape (U+{code:04X}), not a character"
        raise self.fail(node, path, f"contains {what}; remove it")

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
            self.usable(key_node, path)
            key = str(key_node.value)
            control = _CONTROL.search(key)
            if control:
                raise self.fail(key_node, path, f"a key contains a control character"
                                                f" (U+{ord(control.group()):04X}): {key!r}")
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
            self.tick(source, path)
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
    if tag == _TAG + "bool":  # under %YAML 1.1, yes/no and on/off are booleans too
        return text.lower() in ("true", "yes", "y", "on")
    if tag == _TAG + "int":
        value = _to_int(text)
        return text if value is None else YamlInt(value, text)
    if tag == _TAG + "float":
        number = _to_float(text)
        return text if number is None else YamlFloat(number, text)
    return text


def _to_int(text: str) -> int | None:
    clean = text.replace("_", "")
    if len(clean) > MAX_INT_DIGITS:  # no setting takes such a number; as text it is still named
        return None
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
