"""The key that encrypts stored credentials: in the OS keyring where one works, else a 0600 file.

Where the key lives is decided once, when it is made, and remembered in the credentials directory:
``.key`` (the key itself) or ``.keyring`` (the keyring entry that holds it). Deciding once matters:
a keyring that appears or disappears later (a desktop session, a headless SSH login) must not make
moat quietly start a second key, with which the stored credentials cannot be read. The entry's name
is random per MOAT_HOME, so two homes (tests, CI, a user's profiles) never share or overwrite a key.

Creation runs under a file lock: processes that start at once agree on one key.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from moat.credentials.privatefile import write_private_bytes
from moat.errors import MoatError
from moat.files import private_dir

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

KEY_BYTES = 32  # AES-256
KEY_FILE = ".key"
KEYRING_MARKER = ".keyring"  # the keyring entry's account name, when the key is in the keyring
LOCK_FILE = ".key.lock"
KEYRING_SERVICE = "moat"
# "file" keeps the key out of the OS keyring (the Go tool's variable); anything else lets moat try it.
ENV_KEYRING_BACKEND = "MOAT_KEYRING_BACKEND"
LOCK_TIMEOUT = 30.0


class EncryptionKeyError(MoatError):
    """The encryption key cannot be read or made."""


def encryption_key(directory: Path) -> bytes:
    """The key for the credentials under ``directory`` (MOAT_HOME/credentials), made on first use."""
    private_dir(directory)
    try:
        with FileLock(directory / LOCK_FILE, timeout=LOCK_TIMEOUT, mode=0o600):
            return _read_key(directory) or _create_key(directory)
    except Timeout:
        raise EncryptionKeyError(f"another moat has held {directory / LOCK_FILE} for {LOCK_TIMEOUT:.0f} s",
                        hint="If no other moat is running, remove that file and try again.") from None


def _read_key(directory: Path) -> bytes | None:
    key_file, marker = directory / KEY_FILE, directory / KEYRING_MARKER
    if key_file.exists():
        return _read_key_file(key_file)
    if marker.exists():
        return _read_keyring(marker)
    return None


def _create_key(directory: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    encoded = base64.b64encode(key).decode()
    backend = usable_keyring()
    if backend is not None:
        account = f"encryption-key-{secrets.token_hex(8)}"
        try:
            backend.set_password(KEYRING_SERVICE, account, encoded)
            stored = backend.get_password(KEYRING_SERVICE, account) == encoded  # a null backend stores nothing
        except Exception:  # any backend failure (D-Bus, a locked keychain) means: use the file
            stored = False
        if stored:
            write_private_bytes(directory / KEYRING_MARKER, account.encode())
            return key
    write_private_bytes(directory / KEY_FILE, encoded.encode())
    return key


def usable_keyring() -> KeyringBackend | None:
    """The OS keyring, or None when there is none worth using (the fail or null backend)."""
    if os.environ.get(ENV_KEYRING_BACKEND, "").lower() == "file":
        return None
    try:
        import keyring  # noqa: PLC0415 — 85 ms of imports, paid only when a key is needed
        from keyring.backends import chainer, fail, null  # noqa: PLC0415

        backend = keyring.get_keyring()
    except Exception:  # a broken keyring installation is no keyring
        return None
    if isinstance(backend, fail.Keyring | null.Keyring):
        return None
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        return None
    return backend


def _read_key_file(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise EncryptionKeyError(f"the key file {path} is readable by others (mode {mode:04o}, expected 0600)",
                        hint=f"Run `chmod 600 {path}`; if others may have read it, revoke and grant your"
                             " credentials again.")
    try:
        return _decode(path.read_bytes().strip())
    except (ValueError, binascii.Error):
        raise EncryptionKeyError(f"the key file {path} is damaged", hint=_START_OVER) from None


def _read_keyring(marker: Path) -> bytes:
    account = marker.read_text(encoding="utf-8").strip()
    backend = usable_keyring()
    where = f"the OS keyring (service '{KEYRING_SERVICE}', entry '{account}')"
    if backend is None:
        raise EncryptionKeyError(f"moat's encryption key is in {where}, and no keyring can be opened here",
                        hint="Unlock or start your keyring (a desktop session, or the keychain on macOS)."
                             f" {_START_OVER}")
    try:
        encoded = backend.get_password(KEYRING_SERVICE, account)
    except Exception as exc:
        raise EncryptionKeyError(f"cannot read moat's encryption key from {where}: {type(exc).__name__}",
                        hint="Unlock your keyring and try again.") from None
    if encoded is None:
        raise EncryptionKeyError(f"moat's encryption key is missing from {where}", hint=_START_OVER)
    try:
        return _decode(encoded.encode())
    except (ValueError, binascii.Error):
        raise EncryptionKeyError(f"moat's encryption key in {where} is damaged", hint=_START_OVER) from None


_START_OVER = ("To start over instead, remove the credentials directory's .key/.keyring files and the *.enc files"
               " (`moat revoke PROVIDER` for each), then `moat grant PROVIDER` again.")


def _decode(data: bytes) -> bytes:
    key = base64.b64decode(data, validate=True)
    if len(key) != KEY_BYTES:
        raise ValueError("wrong key length")
    return key

