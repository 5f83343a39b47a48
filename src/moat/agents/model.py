"""What an agent command adds to a run: the agent's CLI in the image, its credential, its staged
configuration and its command line. Pure data, built before the plan (see ``moat.agents.setup``).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

# The agent's files are copied into its home when it starts (it rewrites some of them as it runs, so
# they cannot be read-only mounts): moat mounts them here, read-only, and the init script copies them.
INIT_VARIABLE = "MOAT_AGENT_INIT"
COPY_FILES = 'cp -R "$MOAT_AGENT_INIT"/. "$HOME"/'


def init_script(links: list[tuple[str, str]], copy_files: bool) -> str:
    """The shell the agent's command is started through (its arguments follow as "$@"): each
    (mounted directory, path under $HOME) linked into place, the staged files copied, then exec.

    A directory the agent keeps is mounted outside its home and linked in: mounted at its place, the
    engine would create the missing directories above it as root, and the agent could not write its
    own files beside it (~/.claude/settings.json beside ~/.claude/projects/…)."""
    steps = []
    for mounted, relative in links:
        parent = relative.rsplit("/", 1)[0] if "/" in relative else ""
        if parent:
            steps.append(f'mkdir -p "$HOME"/{shlex.quote(parent)}')
        steps.append(f'ln -sfn {shlex.quote(mounted)} "$HOME"/{shlex.quote(relative)}')
    if copy_files:
        steps.append(COPY_FILES)
    return " && ".join([*steps, 'exec "$@"'])
# An argument of the agent's command replaced by where the run mounts moat's context file (which
# depends on the runtime). No argument a user gives can hold a NUL.
CONTEXT_ARGUMENT = "\0moat-context"


@dataclass(frozen=True)
class AgentOptions:
    """The agent command's own flags, as the user gave them."""

    prompt: str | None = None  # -p: run once, non-interactively, and exit
    initial: str | None = None  # words after --: the first message of an interactive session
    yolo: bool = True  # --noyolo turns it off: the agent asks before each action
    continue_session: bool = False  # -c
    resume: str | None = None  # -r: a session id (claude: or a run's id or name)
    flags: Mapping[str, str | bool] = field(default_factory=dict)  # agent-specific (copilot --model, pi --provider)


@dataclass(frozen=True)
class AgentSetup:
    """What the agent needs, in the terms of a run."""

    name: str  # claude, codex, …
    grant: str | None  # the provider whose credential it uses, when one is stored or named
    command: tuple[str, ...]  # the agent's command line
    env: Mapping[str, str] = field(default_factory=dict)
    home_files: Mapping[str, str] = field(default_factory=dict)  # path under $HOME → text (never a secret)
    interactive: bool = True
    # Host directories the agent writes into (its session logs): (host path, path under $HOME).
    state_mounts: tuple[tuple[str, str], ...] = ()
    # What ``moat join`` needs to start the agent again as the run did (its options but the prompt).
    settings: Mapping[str, object] = field(default_factory=dict)
