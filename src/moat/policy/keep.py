"""Keep policy rules (majorcontext/keep, the Go tool's policy engine), for ``claude.llm-gateway``.

A rule file::

    scope: llm-gateway
    mode: enforce              # or audit_only: matches are logged, nothing is denied
    on_error: closed           # a rule whose expression fails denies (open: it is skipped)
    defs: {is_shell: "params.name == 'bash'"}
    rules:
      - name: deny-bash
        match: {operation: "llm.tool_use", when: "is_shell"}   # operation: a glob; when: CEL
        action: deny           # or log
        message: Shell commands are blocked by policy.

evaluated as Keep evaluates it: rules with an exact operation first, then globs, then those without
one; string parameters compared in lower case unless ``case_sensitive: true``; the first matching
deny decides. What moat does not evaluate (packs, profiles, redaction) is refused when the file is
read, never skipped. ``when`` is CEL (cel-python), imported only where a rule is compiled.

Standard library only at import: the proxy daemon imports this module.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSION = "v1"
SCOPE_LLM = "llm-gateway"  # claude.llm-gateway's rules
MODES = ("enforce", "audit_only")
ERROR_MODES = ("closed", "open")
ACTIONS = ("deny", "log")
UNSUPPORTED = {"packs": "rule packs", "profile": "profiles", "redact": "redaction"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class KeepError(ValueError):
    """A rule file moat cannot evaluate as written (the message says which rule and why)."""


@dataclass(frozen=True)
class Rule:
    name: str
    action: str  # deny or log
    operation: str = ""  # a glob (path.Match's) over the operation name; empty: every operation
    when: str = ""  # a CEL expression over params and context; empty: always
    message: str = ""


@dataclass(frozen=True)
class RuleSet:
    scope: str
    rules: tuple[Rule, ...]
    mode: str = "enforce"
    on_error: str = "closed"
    case_sensitive: bool = False
    defs: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "mode": self.mode, "on_error": self.on_error,
                "case_sensitive": self.case_sensitive, "defs": dict(self.defs),
                "rules": [{"name": r.name, "action": r.action, "match": {"operation": r.operation, "when": r.when},
                           "message": r.message} for r in self.rules]}  # a rule file's own shape

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RuleSet:
        return parse_rules(data, str(data.get("scope", "")))


def inline_rules(deny: list[str], mode: str, scope: str) -> RuleSet:
    """moat.yaml's inline form (``policy: {deny: [llm.tool_use], mode: audit}``), as the Go tool
    turns it into a rule file."""
    rules = tuple(Rule(f"deny-{op}", "deny", op, "", "Operation blocked by policy.") for op in deny)
    return RuleSet(scope, rules, "audit_only" if mode == "audit" else "enforce")


def parse_rules(data: object, scope: str) -> RuleSet:
    """A rule file's data (YAML already read), checked for what moat evaluates."""
    if not isinstance(data, Mapping):
        raise KeepError("a Keep rule file is a mapping with scope: and rules:")
    for key, what in UNSUPPORTED.items():
        if data.get(key):
            raise KeepError(f"{key}: Keep's {what} are not supported by moat yet; write the rules out")
    known = {"version", "scope", "mode", "on_error", "case_sensitive", "defs", "rules", "packs", "profile"}
    unknown = sorted(set(data) - known)
    if unknown:
        allowed = ", ".join(sorted(known - {"packs", "profile"}))
        raise KeepError(f"unknown key {unknown[0]!r} (a rule file has {allowed})")
    version = str(data.get("version") or SUPPORTED_VERSION)
    if version != SUPPORTED_VERSION:
        raise KeepError(f"version {version!r}: moat reads version {SUPPORTED_VERSION} rule files")
    declared = str(data.get("scope") or "")
    if declared and declared != scope:
        raise KeepError(f"scope {declared!r}: this policy is for {scope!r}")
    mode = str(data.get("mode") or "enforce")
    if mode not in MODES:
        raise KeepError(f"mode {mode!r}: one of {', '.join(MODES)}")
    on_error = str(data.get("on_error") or "closed")
    if on_error not in ERROR_MODES:
        raise KeepError(f"on_error {on_error!r}: one of {', '.join(ERROR_MODES)}")
    defs = data.get("defs") or {}
    if not isinstance(defs, Mapping) or not all(isinstance(k, str) and _IDENTIFIER.fullmatch(k) and isinstance(v, str)
                                                 for k, v in defs.items()):
        raise KeepError("defs: a mapping of names (letters, digits, _) to CEL expressions")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise KeepError("rules: a list of at least one rule")
    rules = []
    names: set[str] = set()
    for index, raw in enumerate(raw_rules):
        rules.append(_rule(raw, index, names))
    return RuleSet(scope, tuple(rules), mode, on_error, _flag(data.get("case_sensitive", False), "case_sensitive"),
                   dict(defs))


_TRUE, _FALSE = ("true", "yes", "on", "y"), ("false", "no", "off", "n", "")


def _flag(value: object, key: str) -> bool:
    """A boolean as Keep's YAML (yaml.v3) reads one: no, off, false are false (not a true string)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str) or value is None else None
    if text in _TRUE:
        return True
    if text in _FALSE or value is None:
        return False
    raise KeepError(f"{key}: true or false, not {value!r}")


def _rule(raw: object, index: int, names: set[str]) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(raw, Mapping):
        raise KeepError(f"{where}: a rule is a mapping with name:, match: and action:")
    name = str(raw.get("name") or "")
    if not name:
        raise KeepError(f"{where}: a rule needs a name")
    if name in names:
        raise KeepError(f"{where}: two rules are named {name!r}")
    names.add(name)
    where = f"rule {name!r}"
    if raw.get("redact"):
        raise KeepError(f"{where}: redaction is not supported by moat yet")
    extra = sorted(set(raw) - {"name", "description", "match", "action", "message"})
    if extra:
        raise KeepError(f"{where}: unknown key {extra[0]!r}")
    action = str(raw.get("action") or "")
    if action not in ACTIONS:
        hint = " (redaction is not supported by moat yet)" if action == "redact" else ""
        raise KeepError(f"{where}: action {action!r}: one of {', '.join(ACTIONS)}{hint}")
    match = raw.get("match") or {}
    if not isinstance(match, Mapping) or set(match) - {"operation", "when"}:
        raise KeepError(f"{where}: match: has operation: and when:")
    return Rule(name, action, str(match.get("operation") or ""), str(match.get("when") or ""),
                str(raw.get("message") or ""))


@dataclass(frozen=True)
class Decision:
    denied: bool
    rule: str = ""
    message: str = ""
    logged: tuple[str, ...] = ()  # rules that matched with action log (or deny, in audit_only mode)


def _with_defs(expression: str, defs: Mapping[str, str]) -> str:
    """Keep's defs, as its ResolveAliases substitutes them: a name stands for its definition's text,
    except inside a quoted string or after a dot (a field of the same name)."""
    if not defs:
        return expression
    out: list[str] = []
    i, n = 0, len(expression)
    previous = ""  # the last character that was not part of a name or a blank
    while i < n:
        c = expression[i]
        if c in "'\"":
            j = i + 1
            while j < n and expression[j] != c:
                j += 2 if expression[j] == "\\" else 1
            out.append(expression[i:j + 1])
            i, previous = j + 1, c
            continue
        if c.isascii() and (c.isalpha() or c == "_"):
            j = i
            while j < n and expression[j].isascii() and (expression[j].isalnum() or expression[j] == "_"):
                j += 1
            name = expression[i:j]
            out.append(defs[name] if previous != "." and name in defs else name)
            i, previous = j, name[-1]
            continue
        out.append(c)
        if c not in " \t\n\r":
            previous = c
        i += 1
    return "".join(out)


def _lower(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, Mapping):
        return {k: _lower(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower(v) for v in value]
    return value


# What a rule's expression may name: the call's parameters and context (Keep's fields; moat fills
# agent_id, user_id and labels empty), and standard CEL's functions (which cel-python implements).
VARIABLES = frozenset({"params", "context"})
CONTEXT_FIELDS = frozenset({"scope", "operation", "direction", "agent_id", "user_id", "labels"})
FUNCTIONS = frozenset({"size", "has", "int", "uint", "double", "string", "bytes", "bool", "type", "dyn",
                       "duration", "timestamp", "matches"})
METHODS = frozenset({"contains", "startsWith", "endsWith", "matches", "size", "exists", "all", "exists_one",
                     "map", "filter", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getFullYear",
                     "getHours", "getMilliseconds", "getMinutes", "getMonth", "getSeconds"})
MACROS = frozenset({"exists", "all", "exists_one", "map", "filter"})


def _unknown_names(tree: Any) -> str | None:
    """The first function, method or variable in a parsed expression that moat does not provide."""
    bound: set[str] = set()
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg" and str(node.children[1]) in MACROS and len(node.children) > 2:
            for inner in node.children[2].iter_subtrees():  # the macro's variable: its first argument
                if inner.data == "ident":
                    bound.add(str(inner.children[0]))
                    break
    for node in tree.iter_subtrees_topdown():
        tokens = [c for c in node.children if not hasattr(c, "data")]
        if not tokens:
            continue
        name = str(tokens[0])
        if node.data == "ident_arg" and name not in FUNCTIONS:
            return f"the function {name}()"
        if node.data == "member_dot_arg" and name not in METHODS:
            return f"the method .{name}()"
        if node.data == "ident" and name not in VARIABLES and name not in bound:
            return f"the name {name!r}"
        if node.data == "member_dot" and node.children and _is_context(node.children[0]) \
                and name not in CONTEXT_FIELDS:
            return f"context.{name}"
    return None


def _is_context(node: Any) -> bool:
    """Whether a parsed receiver is the bare name ``context`` (member → primary → ident)."""
    while getattr(node, "data", None) in ("member", "primary") and len(node.children) == 1:
        node = node.children[0]
    return getattr(node, "data", None) == "ident" and str(node.children[0]) == "context"


def _specificity(rule: Rule) -> int:
    if not rule.operation:
        return 2
    return 1 if any(c in rule.operation for c in "*?[") else 0


class Evaluator:
    """A rule set compiled once; ``evaluate`` per call (an operation and its parameters)."""

    def __init__(self, rules: RuleSet) -> None:
        import celpy  # noqa: PLC0415 — CEL costs an import only where a policy is evaluated
        from celpy.adapter import json_to_cel  # noqa: PLC0415

        self._to_cel = json_to_cel
        self.rules = rules
        environment = celpy.Environment()
        compiled = []
        for rule in rules.rules:
            program = None
            if rule.when:
                try:
                    tree = environment.compile(_with_defs(rule.when, rules.defs))
                except Exception as exc:  # celpy's parse errors have no common base worth naming
                    detail = " ".join(str(exc).split())[:300]
                    raise KeepError(f"rule {rule.name!r}: its when: is not CEL moat can evaluate: {detail}") from None
                unknown = _unknown_names(tree)
                if unknown:
                    # cel-python would compile it and fail (or, under on_error: open, skip it) mid-run.
                    raise KeepError(f"rule {rule.name!r}: {unknown} is not something moat's Keep rules provide"
                                    f" (standard CEL over params and context.{'/'.join(sorted(CONTEXT_FIELDS))})")
                program = environment.program(tree)
            compiled.append((rule, program))
        # Keep's order: an exact operation before a glob before none; the file's order within each.
        self._compiled = sorted(compiled, key=lambda item: _specificity(item[0]))

    def evaluate(self, operation: str, params: Mapping[str, Any], context: Mapping[str, Any] | None = None,
                 ) -> Decision:
        rules = self.rules
        op = operation if rules.case_sensitive else operation.lower()
        audit = rules.mode == "audit_only"
        try:
            values = dict(params) if rules.case_sensitive else _lower(dict(params))
            ctx = {**dict.fromkeys(CONTEXT_FIELDS, ""), "labels": {}, "scope": rules.scope, "operation": op,
                   **(context or {})}
            if not rules.case_sensitive:
                ctx = _lower(ctx)
            activation = {"params": self._to_cel(values), "context": self._to_cel(ctx)}
        except Exception as exc:  # parameters CEL cannot hold (a 65-bit integer, nesting too deep)
            if audit:
                return Decision(False)
            return Decision(True, "evaluation-error", f"The call's parameters cannot be evaluated: {exc}")
        logged: list[str] = []
        for rule, program in self._compiled:
            if rule.operation and not fnmatch.fnmatchcase(op, rule.operation if rules.case_sensitive
                                                          else rule.operation.lower()):
                continue
            if program is not None:
                try:
                    result = program.evaluate(activation)
                    if isinstance(result, Exception):
                        raise result
                    matched = bool(result)
                except Exception as exc:  # a missing field, a type error: Keep's on_error decides
                    if audit or rules.on_error == "open":
                        continue
                    detail = " ".join(str(exc).split())[:200]
                    return Decision(True, rule.name, f"Rule {rule.name!r} evaluation error: {detail}."
                                                     " Call denied (fail-closed).", tuple(logged))
                if not matched:
                    continue
            if rule.action == "deny" and not audit:
                return Decision(True, rule.name, rule.message, tuple(logged))
            logged.append(rule.name)
        return Decision(False, logged=tuple(logged))
