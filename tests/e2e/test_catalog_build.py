"""The agent image built for real from one dependency of each kind that can be fetched here: a
runtime (node), Debian tools (git; fd, linked under its usual name; protoc; the AWS CLI), a bundle
(node-dev: npm tools), an npm: package, and a GitHub release binary — the last from a local stand-in of GitHub's release
downloads (MOAT_GITHUB_DOWNLOAD_BASE, as a mirror would be set), its checksum file checked.

The stand-in release holds a small program standing in for gh (no release host is reachable here);
what is tested is moat's installer: the download, the checksum, the unpacking, the program's place.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from moat.runtime.docker import DockerRuntime
from tests.helpers import left_for, run_moat, runs, write_workspace
from tests.upstream import serving

pytestmark = pytest.mark.usefixtures("engine")

VERSION = "2.40.0"
ASSET = f"gh_{VERSION}_linux_amd64.tar.gz"
STAND_IN_GH = "#!/bin/sh\necho \"gh version $0 stand-in release\"\n"
HOST_CAS = Path("/usr/local/share/ca-certificates")


@dataclass
class Served:
    """A directory served over plain HTTP on 127.0.0.1 (a stand-in for a download host), and the
    paths asked of it."""

    root: Path
    port: int = 0
    requests: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def _served(stand_in: Served) -> Iterator[None]:
    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            stand_in.requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(stand_in.root)))
    stand_in.port = server.server_address[1]
    with serving(server):
        yield


class Releases(Served):
    def publish(self, sums: str | None = None) -> None:
        """gh's release: the archive, and its checksum file (``sums`` replaces the true one)."""
        directory = self.root / "cli" / "cli" / "releases" / "download" / f"v{VERSION}"
        directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            data = STAND_IN_GH.encode()
            info = tarfile.TarInfo(f"gh_{VERSION}_linux_amd64/bin/gh")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        (directory / ASSET).write_bytes(buffer.getvalue())
        digest = hashlib.sha256(buffer.getvalue()).hexdigest()
        (directory / f"gh_{VERSION}_checksums.txt").write_text(
            sums if sums is not None else f"{'0' * 64}  gh_{VERSION}_macOS_amd64.zip\n{digest}  {ASSET}\n")


@pytest.fixture
def releases(tmp_path: Path) -> Iterator[Releases]:
    stand_in = Releases(tmp_path / "releases")
    stand_in.root.mkdir()
    with _served(stand_in):
        yield stand_in


def _env(releases: Releases) -> dict[str, str]:
    env = {"MOAT_GITHUB_DOWNLOAD_BASE": releases.base}
    if any(HOST_CAS.glob("*.crt")):  # npm's downloads go through this machine's TLS-inspecting proxy
        env["MOAT_BUILD_CA_CERTS"] = str(HOST_CAS)
    return env


CONFIG = "name: every-kind\ndependencies: [node@22, git, fd, gh, node-dev, 'npm:is-number@7.0.0', protoc, aws]\n"
# protoc finds the well-known types it is used with (their .proto files come with it).
PROTO = 'syntax = "proto3"; import "google/protobuf/timestamp.proto"; message M { google.protobuf.Timestamp t = 1; }'
CHECK = ("gh --version; fd --version; tsc --version; prettier --version; eslint --version;"
         f" cd /tmp && echo '{PROTO}' > m.proto && protoc --python_out=. m.proto && ls m_pb2.py;"
         " aws --version | cut -d' ' -f1;"
         " npm ls --global --depth 0 --parseable is-number | sed 's|.*/||'")


def test_an_image_with_one_dependency_of_each_kind(engine: DockerRuntime, moat_home: Path, tmp_path: Path,
                                                   releases: Releases) -> None:
    releases.publish()
    workspace = write_workspace(tmp_path / "ws", CONFIG)
    result = run_moat(["run", "--rebuild", str(workspace), "--", "sh", "-c", CHECK], env=_env(releases), timeout=900)
    assert result.code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "gh version /usr/local/bin/gh stand-in release"  # installed as gh, on PATH
    assert lines[1].startswith("fdfind ") or lines[1].startswith("fd ")  # Debian's, under the usual name
    assert lines[2].startswith("Version ")  # tsc, from the node-dev bundle
    assert lines[5] == "m_pb2.py"  # protoc compiled a file importing a well-known type
    assert lines[6].startswith("aws-cli/2.")  # AWS CLI v2
    assert lines[-1] == "is-number"  # the npm: package, installed globally
    assert releases.requests == [f"/cli/cli/releases/download/v{VERSION}/{ASSET}",
                                 f"/cli/cli/releases/download/v{VERSION}/gh_{VERSION}_checksums.txt"]


@pytest.mark.parametrize("sums, message", [
    (f"{'a' * 64}  {ASSET}\n", "checksum mismatch"),
    (f"{'a' * 64}  gh_{VERSION}_linux_arm64.tar.gz\n", "lists no checksum for"),
])
def test_a_release_whose_checksum_does_not_match_is_not_installed(engine: DockerRuntime, moat_home: Path,
                                                                  tmp_path: Path, releases: Releases, sums: str,
                                                                  message: str) -> None:
    releases.publish(sums=sums)
    workspace = write_workspace(tmp_path / "ws", "name: tampered\ndependencies: [git, gh]\n")
    result = run_moat(["run", str(workspace), "--", "true"], env=_env(releases), timeout=600)
    assert result.code == 1, result.output
    assert "building the agent image" in result.stderr and message in result.stderr
    assert "moat: gh:" in result.stderr  # the installer says which program
    [run] = runs(moat_home)
    assert left_for(engine, run["id"]) == []
    assert os.environ.get("MOAT_GITHUB_DOWNLOAD_BASE") is None  # the test's setting went to moat alone


def _gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(["gpg", "--batch", "--homedir", str(home), "--pinentry-mode", "loopback",
                           "--passphrase", "", *args], input=data, capture_output=True, check=True)
    return done.stdout


def _publish_docker_cli(root: Path, work: Path) -> None:
    client = shutil.which("docker")
    assert client, "the docker client is needed to stand in for docker-ce-cli"
    package = work / "docker-ce-cli"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "usr" / "bin").mkdir(parents=True)
    shutil.copy(client, package / "usr" / "bin" / "docker")
    (package / "DEBIAN" / "control").write_text(
        "Package: docker-ce-cli\nVersion: 5:99.0.0-moat-stand-in\nArchitecture: amd64\n"
        "Maintainer: moat tests <tests@localhost>\nDescription: stand-in for Docker's CLI package\n")
    repo = root / "debian"
    pool = repo / "pool"
    pool.mkdir(parents=True)
    deb = pool / "docker-ce-cli_99.0.0_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(package), str(deb)], check=True,
                   capture_output=True)
    control = (package / "DEBIAN" / "control").read_text()
    data = deb.read_bytes()
    packages = (f"{control.rstrip()}\nFilename: pool/{deb.name}\nSize: {len(data)}\n"
                f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n").encode()
    index = repo / "dists" / "bookworm" / "stable" / "binary-amd64"
    index.mkdir(parents=True)
    (index / "Packages").write_bytes(packages)
    release = ("Origin: moat-stand-in\nSuite: bookworm\nCodename: bookworm\nArchitectures: amd64\n"
               "Components: stable\nDate: Thu, 26 Nov 2026 00:00:00 UTC\nSHA256:\n"
               f" {hashlib.sha256(packages).hexdigest()} {len(packages)} stable/binary-amd64/Packages\n")
    keys = work / "gnupg"
    keys.mkdir(mode=0o700)
    _gpg(keys, "--quick-gen-key", "moat stand-in <tests@localhost>", "ed25519", "sign", "never")
    (repo / "gpg").write_bytes(_gpg(keys, "--armor", "--export"))
    (repo / "dists" / "bookworm" / "InRelease").write_bytes(_gpg(keys, "--clearsign", data=release.encode()))


@pytest.fixture
def docker_apt(tmp_path: Path) -> Iterator[Served]:
    """A stand-in for Docker's apt repository (download.docker.com is not reachable here), signed with
    a key made for the test: a ``docker-ce-cli`` package holding this machine's own docker client."""
    stand_in = Served(tmp_path / "apt")
    _publish_docker_cli(stand_in.root, tmp_path / "apt-work")
    with _served(stand_in):
        yield stand_in


def test_docker_host_hands_the_agent_the_engine_through_its_socket(engine: DockerRuntime, moat_home: Path,
                                                                   tmp_path: Path, docker_apt: Served) -> None:
    """docker:host: Docker's CLI from Docker's apt repository (its stand-in, its signature checked by
    apt), the engine's socket mounted, the agent's user in the socket's group: the agent reaches the
    very engine moat runs on."""
    workspace = write_workspace(tmp_path / "ws", "name: with-docker\ndependencies: ['docker:host']\n")
    if os.getuid() == 0:  # as on a laptop: the agent is an ordinary user, allowed in by the socket's group
        shutil.chown(workspace, 1000, 1000)
    env = {"MOAT_DOCKER_APT_BASE": docker_apt.base}
    if any(HOST_CAS.glob("*.crt")):
        env["MOAT_BUILD_CA_CERTS"] = str(HOST_CAS)
    check = "id -u; docker version --format '{{.Server.Version}}'"
    result = run_moat(["run", str(workspace), "--", "sh", "-c", check], env=env, timeout=900)
    assert result.code == 0, result.output
    uid, server = result.stdout.split()
    assert uid == ("1000" if os.getuid() == 0 else str(os.getuid()))
    assert server == engine.api.version()["Version"]  # the engine moat runs on
    assert "/debian/dists/bookworm/InRelease" in docker_apt.requests  # signed index, checked by apt
    assert any(path.endswith(".deb") for path in docker_apt.requests)
