"""The release installer the agent image's build runs (scripts/fetch-release), run here against a
local stand-in of a release host: each archive shape and checksum-file format, and every refusal."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pytest

from tests.upstream import serving

PROGRAM = b"#!/bin/sh\necho released\n"
ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "host"
    (root / "o" / "r" / "releases" / "download" / "v1").mkdir(parents=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    with serving(server):
        yield root / "o" / "r" / "releases" / "download" / "v1", f"http://127.0.0.1:{server.server_address[1]}"


def _tar(path: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(path)
        info.size, info.mode = len(PROGRAM), 0o755
        tar.addfile(info, io.BytesIO(PROGRAM))
    return buffer.getvalue()


def _zip(path: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(path, PROGRAM)
    return buffer.getvalue()


def fetch(base: str, target: Path, asset: str, bin_: str, *extra: str) -> subprocess.CompletedProcess[str]:
    script = resources.files("moat.plan").joinpath("scripts", "fetch-release")
    return subprocess.run(
        ["sh", str(script), "name=tool", "repo=o/r", "tag=v1", "command=tool", f"asset.{ARCH}={asset}",
         f"bin.{ARCH}={bin_}", f"base={base}", *extra],
        env={"PATH": os.environ["PATH"], "MOAT_INSTALL_DIR": str(target)},
        capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("asset, bin_, data", [
    ("tool.tar.gz", "tool-1/bin/tool", _tar("tool-1/bin/tool")),
    ("tool.zip", "tool-1/tool", _zip("tool-1/tool")),
    ("tool_linux", "tool", PROGRAM),  # a bare program
])
@pytest.mark.parametrize("sums_format", ["{hash}  {asset}\n", "{hash} *{asset}\n", "{hash}  ./{asset}\n",
                                         "{hash}\n"])
def test_it_installs_what_its_checksum_file_vouches_for(host: tuple[Path, str], tmp_path: Path, asset: str,
                                                         bin_: str, data: bytes, sums_format: str) -> None:
    release, base = host
    (release / asset).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    other = f"{'0' * 64}  other.tar.gz\n" if "{asset}" in sums_format else ""
    (release / "SUMS").write_text(other + sums_format.format(hash=digest.upper(), asset=asset))
    result = fetch(base, tmp_path, asset, bin_, f"sums.{ARCH}=SUMS")
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "tool"
    assert installed.read_bytes() == PROGRAM and os.access(installed, os.X_OK)


def test_a_pinned_sha256_needs_no_checksum_file(host: tuple[Path, str], tmp_path: Path) -> None:
    release, base = host
    (release / "tool_linux").write_bytes(PROGRAM)
    ok = fetch(base, tmp_path, "tool_linux", "tool", f"sha256.{ARCH}={hashlib.sha256(PROGRAM).hexdigest()}")
    assert ok.returncode == 0, ok.stderr
    wrong = fetch(base, tmp_path / "no", "tool_linux", "tool", f"sha256.{ARCH}={'f' * 64}")
    assert wrong.returncode == 1 and "checksum mismatch" in wrong.stderr


@pytest.mark.parametrize("case, message", [
    ("mismatch", "checksum mismatch for tool_linux"),
    ("unlisted", "SUMS lists no checksum for tool_linux"),
    ("no sums file", "cannot download its checksum file"),
    ("no checksum at all", "moat installs nothing unverified"),
    ("no asset", "cannot download"),
    ("no such program inside", "holds no program tool-1/tool"),
])
def test_nothing_unverified_or_missing_is_installed(host: tuple[Path, str], tmp_path: Path, case: str,
                                                    message: str) -> None:
    release, base = host
    asset, bin_, extra = "tool_linux", "tool", [f"sums.{ARCH}=SUMS"]
    (release / asset).write_bytes(PROGRAM)
    digest = hashlib.sha256(PROGRAM).hexdigest()
    (release / "SUMS").write_text(f"{digest}  {asset}\n")
    if case == "mismatch":
        (release / "SUMS").write_text(f"{'a' * 64}  {asset}\n")
    elif case == "unlisted":
        (release / "SUMS").write_text(f"{digest}  something-else\n")
    elif case == "no sums file":
        (release / "SUMS").unlink()
    elif case == "no checksum at all":
        extra = []
    elif case == "no asset":
        asset = "missing.tar.gz"
    else:
        data = _tar("tool-1/other")
        (release / "t.tar.gz").write_bytes(data)
        (release / "SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  t.tar.gz\n")
        asset, bin_ = "t.tar.gz", "tool-1/tool"
    result = fetch(base, tmp_path, asset, bin_, *extra)
    assert result.returncode == 1
    assert "moat: tool: " in result.stderr and message in result.stderr, result.stderr
    assert not (tmp_path / "tool").exists()


def test_an_architecture_without_an_asset_is_said(host: tuple[Path, str], tmp_path: Path) -> None:
    script = resources.files("moat.plan").joinpath("scripts", "fetch-release")
    result = subprocess.run(["sh", str(script), "name=tool", "repo=o/r", "tag=v1", "command=tool",
                             "asset.s390x=x", "bin.s390x=x"], capture_output=True, text=True, check=False,
                            env={"PATH": os.environ["PATH"], "MOAT_INSTALL_DIR": str(tmp_path)})
    assert result.returncode == 1 and f"no release asset for this image's architecture ({ARCH})" in result.stderr


def test_a_vendor_download_by_url_with_its_hash_file(host: tuple[Path, str], tmp_path: Path) -> None:
    release, base = host
    (release / "kubectl").write_bytes(PROGRAM)
    (release / "kubectl.sha256").write_text(hashlib.sha256(PROGRAM).hexdigest())  # the hash alone, no newline
    url = f"{base}/o/r/releases/download/v1/kubectl"
    result = fetch("http://unused.invalid", tmp_path, "kubectl", "kubectl", f"url.{ARCH}={url}",
                   f"sums_url.{ARCH}={url}.sha256")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tool").read_bytes() == PROGRAM


@pytest.mark.parametrize("sums", [
    "{hash}  {asset}\r\n",  # written on Windows
    "SHA256 ({asset}) = {hash}\n",  # BSD's format
    "{other}  dist/{asset}\n{hash}  {asset}\n",  # the exact name wins over another directory's file
])
def test_more_checksum_file_formats(host: tuple[Path, str], tmp_path: Path, sums: str) -> None:
    release, base = host
    (release / "tool_linux").write_bytes(PROGRAM)
    (release / "SUMS").write_text(sums.format(hash=hashlib.sha256(PROGRAM).hexdigest(), asset="tool_linux",
                                              other="f" * 64))
    result = fetch(base, tmp_path, "tool_linux", "tool", f"sums.{ARCH}=SUMS")
    assert result.returncode == 0, result.stderr


def test_a_link_in_the_archive_is_not_installed(host: tuple[Path, str], tmp_path: Path) -> None:
    release, base = host
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("tool")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    (release / "t.tar.gz").write_bytes(buffer.getvalue())
    (release / "SUMS").write_text(f"{hashlib.sha256(buffer.getvalue()).hexdigest()}  t.tar.gz\n")
    result = fetch(base, tmp_path, "t.tar.gz", "tool", f"sums.{ARCH}=SUMS")
    assert result.returncode == 1 and "holds no program tool" in result.stderr
    assert not (tmp_path / "tool").exists()


def test_the_images_environment_cannot_supply_a_checksum(host: tuple[Path, str], tmp_path: Path) -> None:
    release, base = host
    (release / "tool_linux").write_bytes(b"not what anyone vouched for")
    script = resources.files("moat.plan").joinpath("scripts", "fetch-release")
    result = subprocess.run(["sh", str(script), "name=tool", "repo=o/r", "tag=v1", "command=tool",
                             f"asset.{ARCH}=tool_linux", f"bin.{ARCH}=tool", f"base={base}"],
                            env={"PATH": os.environ["PATH"], "MOAT_INSTALL_DIR": str(tmp_path),
                                 "sha256": hashlib.sha256(b"x").hexdigest(), "sums": "SUMS"},
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "moat installs nothing unverified" in result.stderr


@pytest.mark.parametrize("link", ["/tmp", "../../.."])
def test_a_linked_directory_in_the_archive_leads_nowhere(host: tuple[Path, str], tmp_path: Path, link: str) -> None:
    release, base = host
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("tool-1")
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    (release / "t.tar.gz").write_bytes(buffer.getvalue())
    (release / "SUMS").write_text(f"{hashlib.sha256(buffer.getvalue()).hexdigest()}  t.tar.gz\n")
    outside = Path(link if link.startswith("/") else "/") / "tool"
    assert not outside.exists()
    result = fetch(base, tmp_path, "t.tar.gz", "tool-1/tool", f"sums.{ARCH}=SUMS")
    assert result.returncode == 1 and "holds no program" in result.stderr
    assert not (tmp_path / "tool").exists()


def test_a_command_name_is_a_name(host: tuple[Path, str], tmp_path: Path) -> None:
    script = resources.files("moat.plan").joinpath("scripts", "fetch-release")
    result = subprocess.run(["sh", str(script), "name=tool", "command=../x", f"asset.{ARCH}=a", f"bin.{ARCH}=a"],
                            env={"PATH": os.environ["PATH"], "MOAT_INSTALL_DIR": str(tmp_path)},
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "bad command name ../x" in result.stderr
