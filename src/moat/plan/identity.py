"""Who the agent is: the uid and gid it runs as, and what that costs in privileges.

The agent acts for the workspace's owner, so that it can read and write the workspace and every file
it writes there stays theirs:

- an invoking user who is not root: that user (files moat writes are theirs anyway);
- root (a CI job, ``sudo``): the workspace's owner;
- when that owner is root too (e.g. ``mktemp -d`` as root, mode 0700): uid 0 inside the container,
  with every capability dropped and no way to gain privileges, which reaches a root-owned 0700
  workspace and nothing a capability would add.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int

    @property
    def root(self) -> bool:
        return self.uid == 0

    @property
    def user(self) -> str:
        return f"{self.uid}:{self.gid}"


def agent_identity(invoker: tuple[int, int], workspace_owner: tuple[int, int]) -> Identity:
    uid, gid = invoker
    if uid != 0:
        return Identity(uid, gid)
    return Identity(*workspace_owner)
