"""The credential store: one AES-256-GCM encrypted file per credential under MOAT_HOME/credentials.

One file per credential (``github.enc``; a profile's under ``profiles/<NAME>/``), not one file for
the store: a grant or a revoke replaces or removes its own file in one atomic step, so two grants at
once cannot lose each other's write, and a damaged file costs one credential, not all of them.

File layout: ``MAGIC || nonce (12 bytes) || ciphertext+tag``. The associated data binds the
ciphertext to its provider, so ``github.enc`` copied over ``openai.enc`` does not decrypt as openai's.
Every write draws a fresh nonce.
"""

from __future__ import annotations

import builtins
import json
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moat.credentials.credential import Credential, check_profile_name, check_provider_name, token_problem
from moat.credentials.keys import encryption_key
from moat.credentials.privatefile import write_private_bytes
from moat.errors import MoatError
from moat.files import private_dir

CREDENTIALS_DIR = "credentials"
PROFILES_DIR = "profiles"
SUFFIX = ".enc"
MAGIC = b"moatcred1\n"
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_FILE = 1024 * 1024  # a credential is a few hundred bytes; a megabyte is not one


class CredentialFileError(MoatError):
    """A stored credential cannot be read: wrong key, altered, truncated or not moat's."""


class CredentialStore:
    """The credentials of one MOAT_HOME, in its default profile or a named one."""

    def __init__(self, home: Path, profile: str | None = None) -> None:
        self.home = home
        self.profile = check_profile_name(profile) if profile else None
        self.root = home / CREDENTIALS_DIR  # the key lives here, shared by every profile
        self.directory = self.root / PROFILES_DIR / profile if profile else self.root
        self._key: bytes | None = None

    def path_for(self, provider: str) -> Path:
        return self.directory / f"{check_provider_name(provider)}{SUFFIX}"

    def save(self, credential: Credential) -> Path:
        """Store ``credential``, replacing the provider's previous one; returns its file."""
        path = self.path_for(credential.provider)
        plaintext = json.dumps(credential.to_json(), separators=(",", ":")).encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self._encryption_key()).encrypt(nonce, plaintext, _associated(credential.provider))
        try:
            private_dir(self.directory)
            _tighten(self.directory)
            write_private_bytes(path, MAGIC + nonce + sealed)
        except OSError as exc:
            where = exc.filename or self.directory
            raise CredentialFileError(f"cannot store the {credential.provider} credential: {where}: {exc.strerror}",
                                      hint=f"Check {self.root} (it must be a directory you can write).") from None
        return path

    def get(self, provider: str) -> Credential | None:
        """The provider's credential, None when there is none; an unreadable file is an error."""
        path = self.path_for(provider)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_FILE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CredentialFileError(f"cannot read {path}: {exc.strerror}") from None
        return self._open(path, provider, data)

    def list(self) -> list[Credential]:
        """Every credential that can be read, by provider name (``unreadable`` names the rest)."""
        found = []
        for provider in self.names():
            try:
                credential = self.get(provider)
            except CredentialFileError:
                continue
            if credential is not None:
                found.append(credential)
        return found

    def unreadable(self) -> builtins.list[str]:
        """Providers whose files exist but cannot be decrypted (for a warning in listings)."""
        broken = []
        for provider in self.names():
            try:
                self.get(provider)
            except CredentialFileError:
                broken.append(provider)
        return broken

    def names(self) -> builtins.list[str]:
        """The providers that have a file in this profile, readable or not."""
        if not self.directory.is_dir():
            return []
        names = []
        for path in self.directory.iterdir():
            name = path.name.removesuffix(SUFFIX)
            if path.name.endswith(SUFFIX) and path.is_file() and _is_provider_name(name):
                names.append(name)
        return sorted(names)

    def delete(self, provider: str) -> bool:
        """Remove the provider's credential (readable or not); whether there was one."""
        path = self.path_for(provider)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise CredentialFileError(f"cannot remove {path}: {exc.strerror}",
                                      hint="Move it away by hand: moat only ever writes files there.") from None
        return True

    def _open(self, path: Path, provider: str, data: bytes) -> Credential:
        if not data.startswith(MAGIC) or len(data) > MAX_FILE:
            raise _unreadable(path, provider, "it is not a moat credential file", self.profile)
        body = data[len(MAGIC):]
        if len(body) < NONCE_BYTES + TAG_BYTES:
            raise _unreadable(path, provider, "it is truncated", self.profile)
        nonce, sealed = body[:NONCE_BYTES], body[NONCE_BYTES:]
        try:
            plaintext = AESGCM(self._encryption_key()).decrypt(nonce, sealed, _associated(provider))
        except InvalidTag:
            raise _unreadable(path, provider, "it does not decrypt: the encryption key changed, or the file was"
                                              " altered, truncated or renamed", self.profile) from None
        try:
            credential = Credential.from_json(json.loads(plaintext))
        except (ValueError, KeyError, TypeError):
            raise _unreadable(path, provider, "its content is not a credential", self.profile) from None
        if credential.provider != provider:
            raise _unreadable(path, provider, f"it holds a credential for '{credential.provider}'", self.profile)
        problem = token_problem(credential.token)
        if problem is not None:  # stored by an older moat that let it through
            raise _unreadable(path, provider, problem, self.profile)
        return credential

    def _encryption_key(self) -> bytes:
        if self._key is None:
            try:
                self._key = encryption_key(self.root)
            except OSError as exc:  # MOAT_HOME/credentials is a file, or not ours to write
                raise CredentialFileError(f"cannot use {exc.filename or self.root} for credentials: {exc.strerror}",
                                          hint=f"{self.root} must be a directory you can write.") from None
        return self._key


def _associated(provider: str) -> bytes:
    return MAGIC + provider.encode()


def _is_provider_name(name: str) -> bool:
    try:
        check_provider_name(name)
    except MoatError:
        return False
    return True


def _tighten(directory: Path) -> None:
    """The credentials directory is 0700 even when someone made it before moat did."""
    try:
        if stat.S_IMODE(directory.stat().st_mode) != 0o700 and directory.stat().st_uid == os.getuid():
            directory.chmod(0o700)
    except OSError:
        pass


def _unreadable(path: Path, provider: str, why: str, profile: str | None) -> CredentialFileError:
    flag = f" --profile {profile}" if profile else ""
    return CredentialFileError(f"the stored credential {path} cannot be read: {why}",
                               hint=f"Store it again: `moat revoke {provider}{flag}`,"
                                    f" then `moat grant {provider}{flag}`.")
