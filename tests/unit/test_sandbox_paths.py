"""Which host directories the sandbox's identity can enter (PATH entries it cannot are dropped)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from moat.plan.identity import Identity
from moat.runtime.sandbox.launch import reachable, search_path

OTHER = Identity(os.geteuid() + 4242, os.getegid() + 4242)  # neither owner nor group of what tests make


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may enter (pytest's own tmp_path sits under a 0700 one when root)."""
    made = Path(tempfile.mkdtemp(prefix="moat-unit-"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made)


def test_a_closed_parent_hides_what_is_below(open_dir: Path) -> None:
    assert reachable(str(open_dir), OTHER)
    closed, opened = open_dir / "closed", open_dir / "open"
    for directory, mode in ((closed, 0o700), (opened, 0o711)):
        (directory / "bin").mkdir(parents=True)
        directory.chmod(mode)
    assert not reachable(str(closed / "bin"), OTHER)
    assert reachable(str(opened / "bin"), OTHER)
    assert not reachable(str(opened / "missing"), OTHER)
    assert search_path(OTHER, f"{closed}/bin:relative:{opened}/bin") == f"{opened}/bin"


def test_moats_own_user_keeps_its_path(tmp_path: Path) -> None:
    me = Identity(os.geteuid(), os.getegid())
    assert search_path(me, f"{tmp_path}:{tmp_path}/missing") == str(tmp_path)
