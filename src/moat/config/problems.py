"""Turn pydantic validation errors into located, actionable problems.

pydantic reports a ``loc`` through the *model* (including union tags and ``[key]`` markers); users
think in terms of their file. We map each error back onto the document's own path, find its line
and column, and phrase it the way the user needs: what was expected, what was found, and the
closest valid key or value.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from moat.config.schema import EXPECTED, PATTERN_RULES, RANGES
from moat.config.yamldoc import Marks, Path, YamlFloat, YamlInt
from moat.errors import Located, dotted_path
from moat.suggest import did_you_mean

_GENERIC_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "tuple": "a list",
    "dict": "a mapping",
    "model": "a mapping",
}


# Longer values are cut short in messages: a line of 64 KiB helps nobody.
_LONGEST = 60


def describe(value: Any) -> str:
    """How a value read from YAML is named in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, YamlInt | YamlFloat):
        return value.text
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        if len(value) > _LONGEST:
            return f"{value[:_LONGEST]!r}… ({len(value)} characters)"
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def data_path(loc: tuple[int | str, ...], data: Any) -> Path:
    """The part of pydantic's ``loc`` that exists in the document (drops union tags, [key])."""
    out: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if part == "[key]":
            continue
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            out.append(part)
            node = node[part]
        elif _single_key_list(node) and index + 1 < len(loc) and isinstance(loc[index + 1], int):
            # A one-key mapping (``host: [rules]``) that a validator renamed: follow its one value.
            (key,) = node
            out.append(key)
            node = node[key]
        elif last and isinstance(node, dict) and isinstance(part, str):
            out.append(part)  # a missing key: named in the path, located at its parent
    return tuple(out)


def _single_key_list(node: Any) -> bool:
    return isinstance(node, dict) and len(node) == 1 and isinstance(next(iter(node.values())), list)


def _union_members(annotation: Any) -> list[tuple[Any, str | None]]:
    """Flatten (possibly nested, Annotated, Optional) unions into (type, tag) pairs."""
    tag = None
    while get_origin(annotation) is typing.Annotated:
        for meta in annotation.__metadata__:
            tag = getattr(meta, "tag", tag)
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        out: list[tuple[Any, str | None]] = []
        for arg in get_args(annotation):
            if arg is not type(None):
                out.extend(_union_members(arg))
        return out
    return [(annotation, tag)]


def annotation_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> Any:
    """Follow ``loc`` through the model's annotations; None where it cannot be followed."""
    current: Any = model
    parts = list(loc)
    while parts:
        members = _union_members(current)
        if len(members) > 1:
            part = parts[0]
            chosen = [m for m, tag in members if part in (tag, getattr(m, "__name__", None))]
            if chosen:  # the loc names the union arm (tag or class name): take it
                current = chosen[0]
                parts.pop(0)
                continue
            models = [m for m, _ in members if isinstance(m, type) and issubclass(m, BaseModel)]
            current = models[0] if models else members[0][0]
        else:
            current = members[0][0]
        part = parts.pop(0)
        if part == "[key]":
            args = get_args(current)
            return args[0] if args else None
        origin = get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            current = _field(current, str(part))
            if current is None:
                return None
        elif origin is dict:
            if parts and parts[0] == "[key]":
                return get_args(current)[0]
            current = get_args(current)[1]
        elif origin in (list, tuple):
            current = get_args(current)[0]
        else:
            return None
    return current


def _field(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def keys_of(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The valid keys of the mapping at ``loc`` (for did-you-mean on an unknown key)."""
    for member, _ in _union_members(annotation_at(model, loc)):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return [info.alias or name for name, info in member.model_fields.items()]
    return []


def literal_options(annotation: Any) -> list[str]:
    for member, _ in _union_members(annotation):
        if get_origin(member) is Literal:
            return [str(a) for a in get_args(member) if a != ""]
    return []


def _expected_for(path: Path, phrases: dict[str, str] = EXPECTED) -> str | None:
    dotted = dotted_path(tuple(p for p in path if not isinstance(p, int)))
    for pattern, phrase in phrases.items():
        regex = "^" + re.escape(pattern).replace(r"\*", r"[^.]+") + "$"
        if re.match(regex, dotted):
            return phrase
    return None


def translate(errors: list[ErrorDetails], data: Any, marks: Marks, model: type[BaseModel]) -> list[Located]:
    problems: list[Located] = []
    for error in errors:
        loc = tuple(error["loc"])
        path = data_path(loc, data)
        kind = error["type"]
        value = error.get("input")
        at_key = kind == "extra_forbidden" or "[key]" in loc
        message = _message(kind, error, loc, path, value, model)
        line, column = marks.locate(path, prefer_key=at_key)
        if kind == "missing":
            line, column = marks.locate(path[:-1])
        problems.append(Located(path, message, line, column))
    return problems


def _message(kind: str, error: ErrorDetails, loc: tuple[int | str, ...], path: Path, value: Any,
             model: type[BaseModel]) -> str:
    if kind == "extra_forbidden":
        key = str(loc[-1])
        return f"unknown key '{key}'{did_you_mean(key, keys_of(model, loc[:-1]))}"
    if kind == "missing":
        return f"required key '{loc[-1]}' is missing"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if "[key]" in loc:
        key = str(loc[loc.index("[key]") - 1])
        options = literal_options(annotation_at(model, loc))
        if options:
            return f"unknown key '{key}'{did_you_mean(key, options)} (valid: {', '.join(options)})"
        key_rule = PATTERN_RULES.get(str((error.get("ctx") or {}).get("pattern")), "a valid key")
        return f"invalid key {key!r}: expected {key_rule}"
    if kind == "literal_error":
        options = literal_options(annotation_at(model, loc))
        hint = did_you_mean(value, options) if isinstance(value, str) else ""
        return f"expected one of {', '.join(repr(o) for o in options)}, got {describe(value)}{hint}"
    if kind == "string_pattern_mismatch":
        rule = PATTERN_RULES.get(str((error.get("ctx") or {}).get("pattern")))
        if rule:
            return f"expected {rule}, got {describe(value)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = (error.get("ctx") or {})
        words = {"greater_than": "greater than", "greater_than_equal": "at least",
                 "less_than": "less than", "less_than_equal": "at most"}[kind]
        limit = next(iter(bound.values()), "?")
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        allowed = _expected_for(path, RANGES)
        return f"must be {words} {limit}, got {describe(value)}" + (f" (allowed: {allowed})" if allowed else "")
    expected = _expected_for(path) or _GENERIC_EXPECTED.get(kind.split("_", maxsplit=1)[0])
    if expected:
        return f"expected {expected}, got {describe(value)}"
    return f"{error['msg']} (got {describe(value)})"
