"""moat's CA (moat.proxy.ca): made once, in mitmproxy's layout, private where it must be."""

from __future__ import annotations

import datetime
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from moat.proxy import ca as ca_module
from moat.proxy.ca import ensure_ca
from moat.proxy.errors import ProxyError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_is_made_once_in_mitmproxys_layout(tmp_path: Path) -> None:
    ca = ensure_ca(tmp_path)
    directory = tmp_path / "proxy" / "ca"
    assert ca.dir == directory
    assert mode(directory) == 0o700
    assert mode(directory / "mitmproxy-ca.pem") == 0o600
    assert mode(directory / "mitmproxy-ca-cert.pem") == 0o644
    assert mode(ca.cert_file) == 0o644
    key_and_cert = (directory / "mitmproxy-ca.pem").read_bytes()
    assert key_and_cert.index(b"PRIVATE KEY") < key_and_cert.index(b"CERTIFICATE")  # mitmproxy reads it so
    assert b"PRIVATE KEY" not in ca.cert_file.read_bytes()
    assert ca.cert_file.read_bytes() == (directory / "mitmproxy-ca-cert.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    assert cert.subject.rfc4514_string() == "O=moat,CN=moat local CA"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3649) < lifetime < datetime.timedelta(days=3651)
    again = ensure_ca(tmp_path)
    assert again.fingerprint == ca.fingerprint
    assert (directory / "mitmproxy-ca.pem").read_bytes() == key_and_cert


def test_concurrent_first_uses_agree_on_one_ca(tmp_path: Path) -> None:
    code = "import sys; from pathlib import Path; from moat.proxy.ca import ensure_ca; " \
           "print(ensure_ca(Path(sys.argv[1])).fingerprint)"
    makers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
              for _ in range(4)]
    fingerprints = {p.communicate(timeout=60)[0].strip() for p in makers}
    assert len(fingerprints) == 1
    assert fingerprints == {ensure_ca(tmp_path).fingerprint}


def test_a_lost_public_file_is_written_again_from_the_key(tmp_path: Path) -> None:
    ca = ensure_ca(tmp_path)
    ca.cert_file.unlink()
    (ca.dir / "mitmproxy-ca-cert.pem").write_text("half")
    again = ensure_ca(tmp_path)
    assert again.fingerprint == ca.fingerprint
    assert ca.cert_file.read_bytes() == (ca.dir / "mitmproxy-ca-cert.pem").read_bytes()


def test_a_ca_about_to_expire_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = ensure_ca(tmp_path)
    monkeypatch.setattr(ca_module, "RENEW_BEFORE", datetime.timedelta(days=4000))
    assert ensure_ca(tmp_path).fingerprint != old.fingerprint


def test_a_damaged_ca_is_a_clear_error(tmp_path: Path) -> None:
    ca = ensure_ca(tmp_path)
    (ca.dir / "mitmproxy-ca.pem").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ProxyError) as raised:
        ensure_ca(tmp_path)
    assert "cannot be read" in raised.value.message
    assert f"Remove {ca.dir}" in (raised.value.hint or "")
