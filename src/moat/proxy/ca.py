"""moat's own certificate authority, which signs the certificates the proxy shows its clients.

Created once per MOAT_HOME, under a lock so that concurrent first runs agree on one CA, in
mitmproxy's confdir layout (the daemon points mitmproxy at the directory) plus ``moat-ca.crt``, the
public certificate runs mount read-only: the key never leaves ``MOAT_HOME/proxy/ca/`` (0700, the key
file 0600). Standard library and ``cryptography`` only: both virtualenvs import it.
"""

from __future__ import annotations

import datetime
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from moat.files import private_dir
from moat.proxy.errors import ProxyError
from moat.proxy.paths import ProxyPaths

COMMON_NAME = "moat local CA"
VALIDITY = datetime.timedelta(days=3650)
RUN_VALIDITY = datetime.timedelta(days=90)  # a run's own CA (run_ca): longer than any run, past RENEW_BEFORE
RENEW_BEFORE = datetime.timedelta(days=30)  # a CA about to expire is replaced before runs trust it
KEY_AND_CERT = "mitmproxy-ca.pem"  # mitmproxy reads its CA (key, then certificate) from here
CERT = "mitmproxy-ca-cert.pem"  # mitmproxy's name for the public half
PUBLIC_CERT = "moat-ca.crt"  # what runs mount and trust


@dataclass(frozen=True)
class CA:
    dir: Path  # mitmproxy's confdir
    cert_file: Path  # moat-ca.crt: public, 0644
    fingerprint: str  # SHA-256 of the certificate, hex


def ensure_ca(home: Path) -> CA:
    """moat's CA for ``home``, created now if there is none (or the one there is about to expire)."""
    directory = private_dir(ProxyPaths(home).ca_dir)
    with _locked(directory / ".lock"):
        key_and_cert = directory / KEY_AND_CERT
        cert = _load(key_and_cert) if key_and_cert.exists() else None
        if cert is None or _expires_soon(cert):
            cert = _create(key_and_cert)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        # The public files are rewritten from the key file when they differ: one half-written by a
        # process killed mid-way, or left from an older CA, is never what runs trust.
        for name in (CERT, PUBLIC_CERT):
            path = directory / name
            if not path.exists() or path.read_bytes() != pem:
                _write(path, pem, 0o644)
        return CA(dir=directory, cert_file=directory / PUBLIC_CERT,
                  fingerprint=cert.fingerprint(hashes.SHA256()).hex())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _load(path: Path) -> x509.Certificate:
    raw = path.read_bytes()
    try:
        serialization.load_pem_private_key(raw, password=None)
        return x509.load_pem_x509_certificate(raw[raw.index(b"-----BEGIN CERTIFICATE-----"):])
    except ValueError as exc:
        raise ProxyError(
            f"moat's proxy CA in {path} cannot be read ({type(exc).__name__})",
            hint=f"Remove {path.parent} to have a new CA made (runs started before then stop trusting the proxy).",
        ) from None


def _expires_soon(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < RENEW_BEFORE


def _create(path: Path) -> x509.Certificate:
    key_and_cert, cert = _generate(COMMON_NAME, VALIDITY)
    _write(path, key_and_cert, 0o600)
    return cert


def run_ca() -> tuple[str, str]:
    """A CA of one run's own (a Kubernetes pod's proxy signs with it): (key and certificate PEM,
    certificate PEM). The cluster never holds the key of moat's CA, which this machine trusts."""
    key_and_cert, cert = _generate(f"{COMMON_NAME} (one run)", RUN_VALIDITY)
    return key_and_cert.decode(), cert.public_bytes(serialization.Encoding.PEM).decode()


def _generate(common_name: str, validity: datetime.timedelta) -> tuple[bytes, x509.Certificate]:
    # P-256: mitmproxy signs every site's certificate with the CA's key and shows that same key to
    # clients, so each new TLS connection costs one signature — a tenth of an RSA-2048 one.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "moat")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # a clock a little behind still accepts it
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem + cert.public_bytes(serialization.Encoding.PEM), cert


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, created with ``mode`` (a key is never readable by others, not even for a moment)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
