"""Provider YAML files → ``Provider``: the Go tool's schema, validated with located errors.

Users' files (MOAT_HOME/providers/*.yaml) are the Go tool's schema exactly::

    name, description, aliases, hosts, inject: {header, prefix}, source_env, container_env,
    validate: {url, method, header, prefix}, prompt

moat's own built-in files may also use keys the Go tool keeps in code (``BUILTIN_ONLY``): several
header rules (github's Bearer for the API, Basic for git), a command that prints the token, fixed
container variables. A user's file that uses one is told so, at its line.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from moat.config.problems import translate
from moat.config.schema import Text, matching
from moat.config.yamldoc import Marks, YamlProblem, load_document
from moat.credentials.credential import PROVIDER_NAME_RE, PROVIDER_NAME_RULE
from moat.credentials.hosts import valid_pattern
from moat.credentials.providers.model import (
    PROXY_INJECTED,
    SUBSTITUTED,
    TOKEN,
    HeaderRule,
    Origin,
    Provider,
    TokenCheck,
)
from moat.errors import ConfigError, Located

MAX_FILE = 64 * 1024
# Keys of the built-in files that users' files (the Go tool's schema) do not have.
BUILTIN_ONLY: dict[tuple[str, ...], str] = {
    ("rules",): "several header rules",
    ("source_cli",): "a command that prints the token",
    ("env",): "fixed container variables",
    ("placeholder",): "a placeholder of the token's own format",
    ("kind",): "a provider kind",
    ("credential_type",): "a credential type",
    ("validate", "headers"): "validation headers",
}
# A header name: an HTTP token (RFC 9110).
_HEADER_RE = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
_ENV_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _host(value: str) -> str:
    problem = valid_pattern(value)
    if problem:
        raise ValueError(problem)
    return value.strip().lower()


def _single_line(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must be a single line without control characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _some_hosts(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("at least one host is required: the token is sent only to the hosts listed here")
    return value


def _url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value[:60]!r}")
    return _single_line(value)


ProviderName = Annotated[str, matching(PROVIDER_NAME_RE.pattern, PROVIDER_NAME_RULE)]
HostPattern = Annotated[str, AfterValidator(_host)]
HeaderName = Annotated[str, matching(_HEADER_RE, "an HTTP header name such as 'X-Api-Key'")]
EnvVar = Annotated[str, matching(_ENV_RE, "a variable name such as 'API_TOKEN' (letters, digits, '_')")]
Line = Annotated[Text, AfterValidator(_single_line)]
Description = Annotated[Text, AfterValidator(_single_line), AfterValidator(_not_blank)]
Url = Annotated[Text, AfterValidator(_url)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InjectModel(_Strict):
    header: HeaderName | Literal[""] = ""
    prefix: Line = ""


class ValidateModel(_Strict):
    url: Url
    method: Literal["GET", "POST", "HEAD", "get", "post", "head"] = "GET"
    header: HeaderName | Literal[""] = ""
    prefix: Line = ""
    headers: dict[HeaderName, Line] = Field(default_factory=dict)  # built-in only


class RuleModel(_Strict):
    """A built-in's header rule (the Go tool keeps these in code)."""

    hosts: list[HostPattern] = Field(default_factory=list)  # default: the provider's hosts
    header: HeaderName
    prefix: Line = ""
    basic_user: Line | None = None
    value: Line | None = None
    remove: list[HeaderName] = Field(default_factory=list)


class ProviderFile(_Strict):
    name: ProviderName
    description: Description
    aliases: list[ProviderName] = Field(default_factory=list)
    hosts: Annotated[list[HostPattern], AfterValidator(_some_hosts)]
    inject: InjectModel = Field(default_factory=InjectModel)
    source_env: list[EnvVar] = Field(default_factory=list)
    container_env: EnvVar | Literal[""] = ""
    check: ValidateModel | None = Field(default=None, alias="validate")
    prompt: Text = ""
    # Built-in files only (BUILTIN_ONLY):
    rules: list[RuleModel] = Field(default_factory=list)
    source_cli: list[Line] = Field(default_factory=list)
    env: dict[EnvVar, Line] = Field(default_factory=dict)
    placeholder: Line = ""
    kind: Literal["token", "npm"] = "token"
    credential_type: Line = "token"

    @model_validator(mode="after")
    def _injects_somehow(self) -> ProviderFile:
        if self.inject.header and self.rules:
            raise ValueError("give either inject or rules, not both")
        if self.kind == "token" and not (self.inject.header or self.rules or self.container_env):
            raise ValueError("inject.header or container_env is required: the token goes into a header, or into"
                             " the requests that carry the container_env placeholder")
        if self.inject.prefix and not self.inject.header:
            raise ValueError("inject.prefix needs inject.header")
        return self


def parse_provider(text: str, *, file: Path | None, origin: Origin) -> Provider:
    """A provider file's text → ``Provider``; every problem is a ``ConfigError`` with file:line."""
    try:
        data, marks = load_document(text)
    except YamlProblem as problem:
        raise ConfigError(file, [problem.problem], hint=_HINT) from None
    if not isinstance(data, dict):
        raise ConfigError(file, [Located((), "a provider file is a mapping with name, description, hosts, …", 1, 1)],
                          hint=_HINT)
    problems = _builtin_keys(data, marks) if origin == "custom" else []
    try:
        model = ProviderFile.model_validate(_without(data, BUILTIN_ONLY) if problems else data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems += translate(errors, data, marks, ProviderFile)
    if problems:
        raise ConfigError(file, problems, hint=_HINT)
    return _provider(model, file, origin)


_HINT = "Fix the provider file (its keys are the Go tool's: see `moat grant providers --help`) and run again."


def _without(data: dict[str, Any], paths: Iterable[tuple[str, ...]]) -> dict[str, Any]:
    """``data`` without the keys at ``paths`` (copied where it changes)."""
    out = dict(data)
    for path in paths:
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                break
            node[part] = node = dict(node[part])
        else:
            node.pop(path[-1], None)
    return out


def _builtin_keys(data: dict[str, Any], marks: Marks) -> list[Located]:
    problems = []
    for path, what in BUILTIN_ONLY.items():
        node: Any = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            line, column = marks.locate(path, prefer_key=True)
            problems.append(Located(path, f"'{path[-1]}' ({what}) is for moat's built-in providers only;"
                                          " a provider file has the Go tool's keys", line, column))
    return problems


def _provider(model: ProviderFile, file: Path | None, origin: Origin) -> Provider:
    hosts = tuple(dict.fromkeys(model.hosts))
    rules = tuple(
        HeaderRule(hosts=tuple(rule.hosts) or hosts, header=rule.header, prefix=rule.prefix,
                   basic_user=rule.basic_user, value=rule.value, remove=tuple(rule.remove))
        for rule in model.rules
    )
    if model.inject.header:
        rules = (HeaderRule(hosts=hosts, header=model.inject.header, prefix=model.inject.prefix),)
    env: dict[str, str] = {}
    if model.container_env:
        # Header mode: any value will do, the proxy replaces the header; substitution: the run's own.
        env[model.container_env] = (model.placeholder or PROXY_INJECTED) if rules else SUBSTITUTED
    env.update(model.env)
    return Provider(
        name=model.name,
        description=model.description.strip(),
        hosts=hosts,
        aliases=tuple(dict.fromkeys(a for a in model.aliases if a != model.name)),
        headers=rules,
        source_env=tuple(dict.fromkeys(model.source_env)),
        source_cli=tuple(model.source_cli),
        container_env=env,
        validate=_check(model, rules),
        prompt=model.prompt,
        kind=model.kind,
        credential_type=model.credential_type,
        origin=origin,
        file=file,
    )


def _check(model: ProviderFile, rules: tuple[HeaderRule, ...]) -> TokenCheck | None:
    """The Go tool's rules: a URL holding ${token} gets no header; else validate.header (or the
    injected header) with validate.prefix, which inherits inject.prefix only when neither is given."""
    check = model.check
    if check is None:
        return None
    headers: list[tuple[str, str]] = [(name, value) for name, value in check.headers.items()]
    if TOKEN not in check.url:
        header = check.header or model.inject.header or (rules[0].header if rules else "")
        prefix = check.prefix if (check.header or check.prefix) else model.inject.prefix
        if header and not any(name.lower() == header.lower() for name, _ in headers):
            headers.insert(0, (header, prefix + TOKEN))
    return TokenCheck(url=check.url, method=check.method.upper(), headers=tuple(headers))
