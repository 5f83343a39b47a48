"""MOAT_BUILD_CA_CERTS: the certificate authorities an agent image's build trusts.

Behind a TLS-inspecting proxy (a corporate network, or these machines' egress) every download a
build makes — npm, pip, a release binary — fails on the proxy's own certificate unless the image
trusts its CA. The host usually does already; the image starts from a base that does not.
The variable names a PEM file, or a directory of them (``/usr/local/share/ca-certificates``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from moat.errors import UsageError

VARIABLE = "MOAT_BUILD_CA_CERTS"
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


def build_ca(host_env: Mapping[str, str]) -> str | None:
    """The PEM text of every certificate the variable names, or None when it is unset or empty."""
    value = host_env.get(VARIABLE, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    hint = (f"Point {VARIABLE} at a PEM file of CA certificates, or a directory of *.crt/*.pem files"
            " (such as /usr/local/share/ca-certificates), or unset it.")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".crt", ".pem") and p.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise UsageError(f"{VARIABLE} names {path}, which does not exist", hint=hint)
    texts = []
    for file in files:
        try:
            text = file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{VARIABLE}: cannot read {file} as a PEM certificate file ({exc})", hint=hint) from None
        if PEM_BEGIN not in text:
            raise UsageError(f"{VARIABLE}: {file} holds no PEM certificate ('{PEM_BEGIN}')", hint=hint)
        texts.append(text.strip() + "\n")
    if not texts:
        raise UsageError(f"{VARIABLE} names the directory {path}, which holds no *.crt or *.pem file", hint=hint)
    return "".join(texts)
