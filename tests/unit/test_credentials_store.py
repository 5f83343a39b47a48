"""The encrypted credential store and its key: round trips, damage of every kind, file modes, the
keyring and its fallback, and several processes making the key at once."""

from __future__ import annotations

import base64
import multiprocessing
import os
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail

from moat.credentials import keys
from moat.credentials.credential import Credential, mask_token
from moat.credentials.keys import EncryptionKeyError, encryption_key
from moat.credentials.store import MAGIC, CredentialFileError, CredentialStore
from moat.errors import MoatError, UsageError

TOKEN = "ghp_0123456789abcdefSECRETvalue"


class MemoryKeyring(KeyringBackend):
    """A keyring that works, in memory (the OS keyring's stand-in)."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.entries.pop((service, username), None)


@pytest.fixture(autouse=True)
def no_os_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Never the user's keyring: the fail backend here and in any child process."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.delenv(keys.ENV_KEYRING_BACKEND, raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(previous)


def credential(provider: str = "github", token: str = TOKEN, **kwargs: object) -> Credential:
    return Credential(provider=provider, token=token, **kwargs)  # type: ignore[arg-type]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    created = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    original = credential(scopes=("repo", "gist"), source="env:GH_TOKEN", created_at=created,
                          expires_at=created + timedelta(days=30), extra={"note": "x"})
    path = store.save(original)
    assert path == tmp_path / "credentials" / "github.enc"
    again = CredentialStore(tmp_path).get("github")  # a new store: the key is read back, not remembered
    assert again == original


def test_missing_credential_is_none_and_delete_says_whether_there_was_one(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    assert store.get("github") is None
    assert store.delete("github") is False
    store.save(credential())
    assert store.delete("github") is True
    assert store.get("github") is None


def test_resaving_replaces_and_uses_a_fresh_nonce(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    path = store.save(credential())
    first = path.read_bytes()
    store.save(credential())
    second = path.read_bytes()
    nonce = slice(len(MAGIC), len(MAGIC) + 12)
    assert first[nonce] != second[nonce]
    assert first != second
    store.save(credential(token="another-token-value-0000"))
    got = store.get("github")
    assert got is not None and got.token == "another-token-value-0000"


def test_files_are_private(tmp_path: Path) -> None:
    os.umask(0o022)
    store = CredentialStore(tmp_path)
    path = store.save(credential())
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    assert mode(path.parent / keys.KEY_FILE) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_directory_made_by_someone_else_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "credentials").mkdir(mode=0o755)
    (tmp_path / "credentials").chmod(0o755)
    CredentialStore(tmp_path).save(credential())
    assert mode(tmp_path / "credentials") == 0o700


def test_no_token_in_clear_on_disk(tmp_path: Path) -> None:
    CredentialStore(tmp_path).save(credential())
    CredentialStore(tmp_path, "work").save(credential("openai", "sk-OPENAI-secret-value-123"))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (TOKEN, "sk-OPENAI-secret-value-123"):
                assert secret.encode() not in data, path
                assert base64.b64encode(secret.encode()) not in data, path


def test_repr_hides_the_token() -> None:
    shown = repr(credential())
    assert TOKEN not in shown and TOKEN not in str(credential())
    assert "****alue" in shown
    assert mask_token("short") == "****"
    assert mask_token("") == "(empty)"


def test_wrong_key_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    path = CredentialStore(tmp_path).save(credential())
    key_file = tmp_path / "credentials" / keys.KEY_FILE
    key_file.write_bytes(base64.b64encode(os.urandom(32)))
    with pytest.raises(CredentialFileError) as caught:
        CredentialStore(tmp_path).get("github")
    error = caught.value
    assert str(path) in error.message and "does not decrypt" in error.message
    assert "moat revoke github" in (error.hint or "") and "moat grant github" in (error.hint or "")
    assert TOKEN not in error.render()


@pytest.mark.parametrize("damage", ["flip-a-byte", "truncate", "empty", "not-ours", "trailing-bytes"])
def test_damaged_files_are_errors_not_tracebacks(tmp_path: Path, damage: str) -> None:
    path = CredentialStore(tmp_path).save(credential())
    data = bytearray(path.read_bytes())
    if damage == "flip-a-byte":
        data[-5] ^= 0x01
    elif damage == "truncate":
        data = data[: len(MAGIC) + 20]
    elif damage == "empty":
        data = bytearray()
    elif damage == "not-ours":
        data = bytearray(b'{"provider": "github", "token": "x"}')
    else:
        data += b"\0"
    path.write_bytes(bytes(data))
    store = CredentialStore(tmp_path)
    with pytest.raises(CredentialFileError) as caught:
        store.get("github")
    assert str(path) in caught.value.message
    assert store.list() == []
    assert store.unreadable() == ["github"]
    assert store.delete("github") is True  # revoking is the way out, and it works


def test_a_file_renamed_to_another_provider_does_not_decrypt(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    path = store.save(credential())
    path.rename(path.with_name("openai.enc"))
    with pytest.raises(CredentialFileError, match="does not decrypt"):
        store.get("openai")


def test_list_is_sorted_and_skips_what_is_not_a_credential(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    store.save(credential("openai", "sk-one-two-three-four"))
    store.save(credential("github"))
    (store.directory / "notes.txt").write_text("hello")
    (store.directory / "Bad Name.enc").write_bytes(b"x")
    assert [c.provider for c in store.list()] == ["github", "openai"]
    assert store.unreadable() == []


def test_profiles_are_separate_and_share_the_key(tmp_path: Path) -> None:
    default, work = CredentialStore(tmp_path), CredentialStore(tmp_path, "work")
    default.save(credential(token="default-token-000000"))
    path = work.save(credential(token="work-token-0000000000"))
    assert path == tmp_path / "credentials" / "profiles" / "work" / "github.enc"
    assert mode(path.parent) == 0o700
    assert default.get("github").token == "default-token-000000"  # type: ignore[union-attr]
    assert work.get("github").token == "work-token-0000000000"  # type: ignore[union-attr]
    assert not (path.parent / keys.KEY_FILE).exists()


@pytest.mark.parametrize("profile", ["../x", "a/b", "-x", "", "x" * 65, "é"])
def test_bad_profile_names_are_usage_errors(tmp_path: Path, profile: str) -> None:
    if profile == "":
        assert CredentialStore(tmp_path, profile).profile is None  # empty: the default profile
        return
    with pytest.raises(UsageError, match="invalid profile name"):
        CredentialStore(tmp_path, profile)


@pytest.mark.parametrize("provider", ["../etc", "a/b", "GitHub", "x:y", ""])
def test_bad_provider_names_never_become_paths(tmp_path: Path, provider: str) -> None:
    with pytest.raises(UsageError, match="invalid provider name"):
        CredentialStore(tmp_path).path_for(provider)


# --- the key ---------------------------------------------------------------------------------


def test_key_file_is_made_once_and_reused(tmp_path: Path) -> None:
    first = encryption_key(tmp_path)
    assert encryption_key(tmp_path) == first
    assert len(first) == 32
    assert not (tmp_path / keys.KEYRING_MARKER).exists()


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    encryption_key(tmp_path)
    (tmp_path / keys.KEY_FILE).chmod(0o644)
    with pytest.raises(EncryptionKeyError, match="readable by others") as caught:
        encryption_key(tmp_path)
    assert "chmod 600" in (caught.value.hint or "")


def test_a_damaged_key_file_is_an_error(tmp_path: Path) -> None:
    encryption_key(tmp_path)
    (tmp_path / keys.KEY_FILE).write_text("not base64 at all!")
    with pytest.raises(EncryptionKeyError, match="damaged"):
        encryption_key(tmp_path)


def test_the_key_goes_to_a_working_keyring(tmp_path: Path) -> None:
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    key = encryption_key(tmp_path)
    assert not (tmp_path / keys.KEY_FILE).exists()
    account = (tmp_path / keys.KEYRING_MARKER).read_text()
    assert account.startswith("encryption-key-")
    assert base64.b64decode(memory.entries[("moat", account)]) == key
    assert encryption_key(tmp_path) == key
    # Another MOAT_HOME gets a key of its own, under another entry.
    other = tmp_path / "other"
    assert encryption_key(other) != key
    assert len(memory.entries) == 2


def test_a_keyring_key_that_cannot_be_reached_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    keyring.set_keyring(MemoryKeyring())
    CredentialStore(tmp_path).save(credential())
    keyring.set_keyring(fail.Keyring())
    with pytest.raises(MoatError, match="no keyring can be opened") as caught:
        CredentialStore(tmp_path).get("github")
    assert "Unlock" in (caught.value.hint or "")
    assert not (tmp_path / "credentials" / keys.KEY_FILE).exists()


def test_a_key_missing_from_the_keyring_is_said(tmp_path: Path) -> None:
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    encryption_key(tmp_path)
    memory.entries.clear()
    with pytest.raises(EncryptionKeyError, match="missing from"):
        encryption_key(tmp_path)


def test_moat_keyring_backend_file_keeps_the_key_out_of_the_keyring(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    monkeypatch.setenv(keys.ENV_KEYRING_BACKEND, "file")
    encryption_key(tmp_path)
    assert (tmp_path / keys.KEY_FILE).exists()
    assert memory.entries == {}


def test_a_keyring_that_fails_on_write_falls_back_to_the_file(tmp_path: Path) -> None:
    class Broken(MemoryKeyring):
        def set_password(self, service: str, username: str, password: str) -> None:
            raise keyring.errors.PasswordSetError("locked")

    keyring.set_keyring(Broken())
    key = encryption_key(tmp_path)
    assert (tmp_path / keys.KEY_FILE).exists()
    assert encryption_key(tmp_path) == key


def _make_key(directory: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue[str]) -> None:
    # A slow creation widens the window in which an unlocked reader would find no key and make its own.
    create = keys._create_key

    def slow_create(path: Path) -> bytes:
        time.sleep(0.2)
        return create(path)

    keys._create_key = slow_create  # type: ignore[assignment]
    start.wait()
    out.put(base64.b64encode(encryption_key(Path(directory))).decode())


def test_processes_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate moat commands are
    start = context.Event()
    out: multiprocessing.Queue[str] = context.Queue()
    workers = [context.Process(target=_make_key, args=(str(tmp_path), start, out)) for _ in range(6)]
    for worker in workers:
        worker.start()
    start.set()
    results = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(set(results)) == 1
    assert base64.b64decode(results[0]) == encryption_key(tmp_path)
