"""Find, read and validate ``moat.yaml`` into a frozen ``Config``.

Validation happens in two passes, each reporting every problem it finds with its location:
the file's shape (``schema``), then its meaning against the catalog (``checks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from moat.catalog import Catalog
from moat.catalog.deps import Dependency
from moat.config import checks
from moat.config.problems import translate
from moat.config.schema import MoatConfig
from moat.config.yamldoc import MAX_SIZE, Marks, YamlProblem, load_document, too_large
from moat.constants import CONFIG_FILENAMES
from moat.errors import ConfigError, Located

# A moat.yaml is a few kilobytes; refuse to parse something that is clearly not one.
MAX_CONFIG_BYTES = MAX_SIZE
# Past this many, more problems help nobody, and phrasing each (with its did-you-mean) costs time.
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Config:
    """A validated moat.yaml (or the empty configuration when the workspace has none)."""

    file: Path | None
    model: MoatConfig
    dependencies: tuple[Dependency, ...]
    provisions: dict[str, tuple[str, ...]]  # service → items to provision (e.g. ollama models)
    marks: Marks = field(default_factory=Marks, repr=False)

    def where(self, *path: str | int) -> str:
        """``moat.yaml:12`` for a key, for messages about config values found valid but unusable."""
        if self.file is None:
            return "command line"
        line, _ = self.marks.locate(tuple(path), prefer_key=True)
        return f"{self.file.name}:{line}" if line else self.file.name


def find_config_file(workspace: Path) -> Path | None:
    for name in CONFIG_FILENAMES:
        candidate = workspace / name
        if candidate.is_dir():
            continue  # a directory of that name is not a config: the next name is looked at
        if candidate.is_file() or candidate.is_symlink() or candidate.exists():
            _check_readable_as_config(candidate, workspace)
            return candidate
    return None


def _check_readable_as_config(file: Path, workspace: Path) -> None:
    """A config is a regular file in the workspace. Not a FIFO (reading it would hang) nor a link to
    a file elsewhere: moat may run as root for a workspace someone else controls, and what it reads
    ends up in its messages (a link to /etc/shadow would print root's password hash)."""
    if not file.is_file():
        raise ConfigError(file, [Located((), "not a regular file (a FIFO, a device or a broken link?)")])
    real, inside = file.resolve(), workspace.resolve()
    if file.is_symlink() and not real.is_relative_to(inside):
        raise ConfigError(file, [Located((), f"a link to {real}, outside the workspace")],
                          hint="Copy the file into the workspace (moat reads only the workspace's own moat.yaml).")


def load_config(workspace: Path, catalog: Catalog, implied: tuple[str, ...] = ()) -> Config:
    """Load the workspace's moat.yaml (falling back to agent.yaml); none at all is an empty config.
    ``implied``: dependencies the command adds (an agent's), checked together with the file's."""
    file = find_config_file(workspace)
    if file is None:
        return parse_config("", catalog, implied=implied) if implied else Config(None, MoatConfig(), (), {})
    return parse_config(read_config_text(file), catalog, file=file, implied=implied)


def read_config_text(file: Path) -> str:
    """A configuration file's text: readable, not absurdly large, UTF-8 (else a located error)."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ConfigError(file, [Located((), f"cannot read the file: {exc.strerror}")]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(file, [Located((), too_large())])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, [Located((), f"not UTF-8 text (byte {exc.start})")]) from None


def parse_config(text: str, catalog: Catalog, *, file: Path | None = None, implied: tuple[str, ...] = ()) -> Config:
    """Validate moat.yaml text. Raises ``ConfigError`` listing every problem found."""
    try:
        data, marks = load_document(text)
    except YamlProblem as problem:
        raise ConfigError(file, [problem.problem]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, [Located((), "the file must be a mapping of keys such as 'dependencies:'", 1, 1)])
    try:
        model = MoatConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = translate(errors[:MAX_PROBLEMS], data, marks, MoatConfig)
        problems += _locate(checks.check_raw(data, catalog, implied), marks)
        raise ConfigError(file, _at_most(problems, len(errors) - len(errors[:MAX_PROBLEMS]))) from None
    result = checks.check(model, catalog, implied)
    problems = _locate(result.problems, marks)
    if problems:
        raise ConfigError(file, _at_most(problems, 0))
    return Config(file, model, tuple(result.dependencies), result.provisions, marks)


def _at_most(problems: list[Located], unphrased: int) -> list[Located]:
    """The first problems in the file, and how many more there are."""
    if len(problems) <= MAX_PROBLEMS and not unphrased:
        return problems
    shown = sorted(problems, key=lambda p: (p.line or 0, p.column or 0))[:MAX_PROBLEMS]
    more = len(problems) - len(shown) + unphrased
    return [*shown, Located((), f"{more} more problems not shown; fix these and run again")]


def _locate(problems: list[checks.Problem], marks: Marks) -> list[Located]:
    return [Located(p.path, p.message, *marks.locate(p.path, prefer_key=p.at_key)) for p in problems]
