"""Which variables hold credentials, and the one sink every run's text passes."""

from __future__ import annotations

import pytest

from moat.constants import MASK
from moat.masking import Masker, credential_values, is_credential_name, register, scrub


@pytest.mark.parametrize("name", ["MYSQL_PASSWORD", "POSTGRES_PASSWORD", "REDISCLI_AUTH", "MYSQL_PWD", "GH_TOKEN",
                                  "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "SSH_PRIVATE_KEY", "DBPASSWORD",
                                  "db-password", "npm.token", "APIKEY", "MY_CREDENTIALS"])
def test_credential_names(name: str) -> None:
    assert is_credential_name(name)


@pytest.mark.parametrize("name", ["PWD", "OLDPWD", "MONKEY", "PASSAGE", "MYSQL_USER", "POSTGRES_DB", "KEYBOARD",
                                  "TOKENIZER_PATH", "PATH", "HOME"])
def test_not_credential_names(name: str) -> None:
    assert not is_credential_name(name)


def test_credential_values_skip_empty_ones() -> None:
    assert credential_values({"MYSQL_PASSWORD": "pw", "MYSQL_USER": "bob", "API_TOKEN": ""}) == {"pw"}


def test_the_process_sink_masks_every_registered_run() -> None:
    register(Masker({"first-secret-1"}))
    late = Masker()
    register(late)
    late.add({"added-later-22"})
    assert scrub("a first-secret-1 b added-later-22") == f"a {MASK} b {MASK}"
