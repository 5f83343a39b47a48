"""moat.yaml's ``hooks``, as the Go tool runs them.

- ``post_build_root``: a layer of the agent's image, as root, after its dependencies;
- ``post_build``: the next layer, as the agent's user (both cached with the image; a changed hook
  changes the image's tag);
- ``pre_run``: on every start of the agent's container, as the agent's user in the workspace, before
  its command (an agent's too); a failure stops the run with the hook's exit code, and says so.

A build hook written as a YAML block is one command per line, joined with ``&&`` (a line's own
trailing ``&&``, ``;`` or ``\\`` dropped first; blank lines and comment lines skipped), so a failing
line fails the layer. ``pre_run`` is a script of its own, run by ``/bin/sh`` as written.
"""

from __future__ import annotations

import json

PRE_RUN_VARIABLE = "MOAT_PRE_RUN"  # the hook's text, for the wrapper to run (never re-parsed on the host)
HOOK_NAME = "moat-hook:"  # the script's $0, so a failing build step names its hook

# $MOAT_PRE_RUN in a shell of its own (an `exit` in it ends the hook, not the wrapper); then the command.
PRE_RUN_WRAPPER = (
    '/bin/sh -c -- "$' + PRE_RUN_VARIABLE + '"; status=$?; '
    'if [ "$status" -ne 0 ]; then '
    'echo "moat: the pre_run hook failed (exit code $status); the command did not run. Its output is above;'
    ' fix hooks.pre_run in moat.yaml." >&2; exit "$status"; fi; '
    "unset " + PRE_RUN_VARIABLE + '; exec "$@"'
)


def script(text: str) -> str:
    """A hook's text as its script: lines split at newlines only (a form feed or U+2028 inside a
    quoted string is not a line break), carriage returns and trailing blank lines dropped."""
    return "\n".join(line.rstrip("\r") for line in text.split("\n")).strip("\n")


def run_instruction(key: str, text: str, prelude: str = "") -> str | None:
    """The Dockerfile ``RUN`` of build hook ``key`` (None when it holds no command): exec form, so the
    script reaches ``/bin/sh -e`` exactly, newlines included, and no text of it is a Dockerfile line."""
    body = script(text)
    if not any(line.strip() and not line.lstrip().startswith("#") for line in body.split("\n")):
        return None
    return "RUN " + json.dumps(["/bin/sh", "-ec", prelude + body, f"{HOOK_NAME}{key}"])


def with_pre_run(command: tuple[str, ...]) -> tuple[str, ...]:
    """``command`` run after the pre_run hook (its text in ``PRE_RUN_VARIABLE``) succeeded."""
    return ("/bin/sh", "-c", PRE_RUN_WRAPPER, "moat-pre-run", *command)
