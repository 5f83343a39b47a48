"""What an agent image's build takes from the host's environment: MOAT_BUILD_CA_CERTS, the certificate
authorities it trusts, and the mirrors it downloads from (MOAT_GITHUB_DOWNLOAD_BASE, MOAT_GOPROXY).

Behind a TLS-inspecting proxy (a corporate network, or these machines' egress) every download a
build makes — npm, pip, a release binary — fails on the proxy's own certificate unless the build
trusts its CA. The host usually does already; the image starts from a base that does not.
The variable names a PEM file, or a directory of them (``/usr/local/share/ca-certificates``, searched
as ``update-ca-certificates`` does: below it too, any case of ``.crt``/``.pem``).

Only the certificates are taken: a PEM file often holds its private key too (mitmproxy's
``mitmproxy-ca.pem``), and a key must never reach an image layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from moat.errors import UsageError

VARIABLE = "MOAT_BUILD_CA_CERTS"
GITHUB_BASE_VARIABLE = "MOAT_GITHUB_DOWNLOAD_BASE"  # a mirror of https://github.com's release downloads
GOPROXY_VARIABLE = "MOAT_GOPROXY"  # a Go module proxy (GOPROXY's syntax) for go install
DOCKER_APT_VARIABLE = "MOAT_DOCKER_APT_BASE"  # a mirror of download.docker.com/linux (docker:host)
# https, or plain http to this machine only: a release's checksum file comes from the same host as the
# release, so a plain-http path anyone on the way could rewrite would vouch for what it served.
MIRROR = re.compile(r"^(https://[A-Za-z0-9.\-\[\]:]+|http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]+)?)"
                    r"(/[A-Za-z0-9._~%/+\-]*)?$")
GOPROXY_ENTRY = re.compile(r"^(direct|off|file:///[A-Za-z0-9._~%/+\-]*)$")
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----")
SUFFIXES = (".crt", ".pem")
MAX_FILE = 4 * 1024 * 1024  # a bundle of every public CA is ~200 KiB


def build_ca(host_env: Mapping[str, str]) -> str | None:
    """The PEM certificates the variable names, or None when it is unset or empty."""
    value = host_env.get(VARIABLE, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    hint = (f"Point {VARIABLE} at a PEM file of CA certificates, or a directory of *.crt/*.pem files"
            " (such as /usr/local/share/ca-certificates), or unset it.")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
        found = [cert for file in files for cert in _certificates(file, hint)]
        if not found:
            raise UsageError(f"{VARIABLE} names the directory {path}, which holds no PEM certificate in a"
                             " *.crt or *.pem file", hint=hint)
    elif path.is_file():
        found = _certificates(path, hint)
        if not found:
            raise UsageError(f"{VARIABLE}: {path} holds no PEM certificate ('{PEM_BEGIN}')", hint=hint)
    else:
        raise UsageError(f"{VARIABLE} names {path}, which does not exist", hint=hint)
    return "".join(cert.replace("\r\n", "\n") + "\n" for cert in dict.fromkeys(found))


def _certificates(file: Path, hint: str) -> list[str]:
    try:
        if file.stat().st_size > MAX_FILE:
            raise UsageError(f"{VARIABLE}: {file} is larger than {MAX_FILE // (1024 * 1024)} MiB;"
                             " it is not a file of CA certificates", hint=hint)
        text = file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{VARIABLE}: cannot read {file} as a PEM file ({type(exc).__name__})", hint=hint) from None
    return CERTIFICATE.findall(text)


def mirrors(host_env: Mapping[str, str], *, releases: bool = True, go: bool = True,
            docker: bool = False) -> dict[str, str]:
    """The build's download mirrors, read only when the image downloads from them (a value the build
    does not use stops nothing). They reach the Dockerfile's command lines: URLs only."""
    found = {}
    if releases and (base := _base_url(host_env, GITHUB_BASE_VARIABLE, "https://mirror.example.com/github")):
        found["github_base"] = base
    value = host_env.get(GOPROXY_VARIABLE, "").strip()
    if value and go:
        entries = re.split(r"[,|]", value)  # GOPROXY's list: ',' falls back on 404, '|' on any error
        if not all(MIRROR.fullmatch(e) or GOPROXY_ENTRY.fullmatch(e) for e in entries):
            raise UsageError(f"{GOPROXY_VARIABLE} must be GOPROXY's list of https:// URLs (or http:// to this"
                             f" machine, file:///, direct, off), not {value[:80]!r}",
                             hint=f"For example {GOPROXY_VARIABLE}=https://goproxy.example.com,direct")
        found["goproxy"] = value
    if docker and (base := _base_url(host_env, DOCKER_APT_VARIABLE, "https://mirror.example.com/docker/linux")):
        found["docker_apt_base"] = base
    return found


def _base_url(host_env: Mapping[str, str], variable: str, example: str) -> str | None:
    """A mirror's base URL from ``variable``: https, or http to this machine; None when unset."""
    value = host_env.get(variable, "").strip()
    if not value:
        return None
    if not MIRROR.fullmatch(value):
        raise UsageError(f"{variable} must be an https:// URL (or http:// to this machine), not {value[:80]!r}",
                         hint=f"For example {variable}={example}")
    return value.rstrip("/")
