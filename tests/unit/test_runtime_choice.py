"""Which runtime a run uses: explicit choices win; otherwise docker if an engine answers, else the sandbox."""

from __future__ import annotations

import pytest

from moat.errors import UsageError
from moat.runtime import select


def test_explicit_choices_in_order_of_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "docker_answers", lambda: pytest.fail("an explicit choice needs no engine check"))
    assert select.choose("sandbox", "docker", {"MOAT_RUNTIME": "docker"}) == ("sandbox", None)  # --runtime
    assert select.choose(None, "sandbox", {"MOAT_RUNTIME": "docker"}) == ("sandbox", None)  # moat.yaml
    assert select.choose(None, "", {"MOAT_RUNTIME": "sandbox"}) == ("sandbox", None)  # environment


@pytest.mark.parametrize(("answers", "expected"), [(True, "docker"), (False, "sandbox")])
def test_automatic_choice_says_why(monkeypatch: pytest.MonkeyPatch, answers: bool, expected: str) -> None:
    monkeypatch.setattr(select, "docker_answers", lambda: answers)
    runtime, note = select.choose(None, "", {})
    assert runtime == expected
    assert (note is None) == answers
    if note:
        assert "no container engine answers" in note and "sandbox" in note


def test_an_unknown_runtime_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as caught:
        select.choose(None, "", {"MOAT_RUNTIME": "podman-machine"})
    assert caught.value.exit_code == 2 and "docker, sandbox" in caught.value.message
