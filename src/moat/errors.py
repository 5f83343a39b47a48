"""moat's one exception hierarchy.

Every failure a user can act on is a ``MoatError``: it carries the text to show and the process exit
code, so the CLI has a single place that turns errors into output (no traceback unless --verbose).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class MoatError(Exception):
    """Root of every error moat reports to its user."""

    exit_code: int = EXIT_RUNTIME

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        """The full text shown to the user: what went wrong, then what to do."""
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message


class UsageError(MoatError):
    """The command line asked for something invalid."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Located:
    """One problem in a config file, with where it is."""

    path: tuple[str | int, ...]
    message: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    @property
    def dotted(self) -> str:
        return dotted_path(self.path)


def dotted_path(path: tuple[str | int, ...]) -> str:
    """``("services", "ollama", "models", 0)`` → ``services.ollama.models[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


class ConfigError(MoatError):
    """``moat.yaml`` is wrong; every problem found is reported at once, each with its location."""

    exit_code = EXIT_USAGE

    def __init__(self, file: Path | None, problems: list[Located], *, hint: str | None = None) -> None:
        self.file = file
        self.problems = sorted(
            problems, key=lambda p: (p.line or 0, p.column or 0, p.dotted, p.message)
        )
        super().__init__(self._summary(), hint=hint or _DEFAULT_CONFIG_HINT)

    def _summary(self) -> str:
        where = self.file.name if self.file else "configuration"
        count = len(self.problems)
        head = f"{where}: {count} problem{'s' if count != 1 else ''} found"
        return "\n".join([head, *(self.format_problem(p) for p in self.problems)])

    def format_problem(self, problem: Located) -> str:
        name = str(self.file) if self.file else "<config>"
        if problem.line is not None:
            name += f":{problem.line}"
            if problem.column is not None:
                name += f":{problem.column}"
        return f"  {name}: {problem.dotted}: {problem.message}"


_DEFAULT_CONFIG_HINT = "Fix the file and run again; the README's 'moat.yaml reference' lists every key."


class UnsupportedFeatureError(MoatError):
    """The config asks for a feature this version of moat does not implement yet."""

    exit_code = EXIT_USAGE


class EngineError(MoatError):
    """The container engine is missing, unreachable or failed an operation."""
