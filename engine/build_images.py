#!/usr/bin/env python3
"""Build moat's local test images, skipping those whose build inputs have not changed.

No image registry is reachable on moat's machines, so every image a test uses is built here:

* the base ``debian:bookworm-slim``: debootstrap (minbase) from the mirror in the host's apt
  sources, slimmed, imported with ``docker import`` (recipe: ``engine/base/``; the rootfs tar is
  cached under /var/cache/moat-engine so a re-import is quick);
* one image per directory ``engine/images/<name>/`` holding a ``Dockerfile``: tagged
  ``moat-test/<name>:latest`` (or the words of an optional ``TAG`` file there: the first is its
  tag, the rest more tags), built with
  ``docker build --network host`` (dockerd runs with --iptables=false, so a build's apt-get
  needs the host network). Adding an image = adding a directory.

Every image carries the label ``moat.build-hash``: sha256 over its build inputs (all files of
its directory, their exec bits, and the hashes of the images it is built FROM). An image whose
tag already carries the current hash is skipped.

Usage: build_images.py [--force] [--jobs N] [--list] [NAME ...]
Only the standard library; talks to the engine through the ``docker`` CLI.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENGINE_DIR = Path(__file__).resolve().parent
IMAGES_DIR = ENGINE_DIR / "images"
BASE_DIR = ENGINE_DIR / "base"
CACHE_DIR = Path(os.environ.get("MOAT_ENGINE_CACHE", "/var/cache/moat-engine"))
LOG_DIR = CACHE_DIR / "logs"

LABEL = "moat.build-hash"
BASE_TAG = "debian:bookworm-slim"
BASE_NAME = "base"
SUITE = "bookworm"
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
BASE_ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Bump to force a rebuild of everything (e.g. after changing how this driver builds).
RECIPE_VERSION = "moat-engine-images-v1"
SKIP_NAMES = {"__pycache__", ".git", ".DS_Store"}

_print_lock = threading.Lock()


def say(msg: str, err: bool = False) -> None:
    # output piped into `head` etc.: keep building
    with _print_lock, contextlib.suppress(BrokenPipeError):
        print(msg, file=sys.stderr if err else sys.stdout, flush=True)


class BuildError(Exception):
    pass


# --------------------------------------------------------------------------- docker helpers


def docker(
    *args: str, check: bool = True, capture: bool = True, **kw
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The docker client here has no buildx plugin; the legacy builder honours --network host.
    env["DOCKER_BUILDKIT"] = "0"
    proc = subprocess.run(
        ["docker", *args],
        check=False,
        env=env,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        **kw,
    )
    if check and proc.returncode != 0:
        raise BuildError(
            f"docker {' '.join(args)} failed (exit {proc.returncode}): "
            f"{(proc.stderr or '').strip()}"
        )
    return proc


def image_label(tag: str) -> str | None:
    """The moat.build-hash label of a local image, '' if unlabelled, None if absent."""
    proc = docker(
        "image", "inspect", "--format", "{{json .Config.Labels}}", tag, check=False
    )
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout.strip() or "null") or {}
    return labels.get(LABEL, "")


def run_logged(cmd: list[str], log_path: Path, stdin=None) -> None:
    """Run cmd with all output to log_path; on failure raise with the log's tail."""
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.run(
            cmd, check=False, stdout=log, stderr=subprocess.STDOUT, stdin=stdin, env=env
        )
    if proc.returncode != 0:
        raise BuildError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode})\n" + tail(log_path, 40)
        )


def tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ""
    return f"    --- last {len(lines)} lines of {path} ---\n" + "\n".join(
        "    " + line for line in lines
    )


# --------------------------------------------------------------------------- hashing


def hash_tree(h: Any, root: Path) -> None:
    """Feed every regular file under root (relative path, exec bit, content) into h."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
        for fn in filenames:
            if fn in SKIP_NAMES or fn.endswith((".pyc", "~")):
                continue
            files.append(Path(dirpath) / fn)
    for p in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        rel = p.relative_to(root).as_posix()
        data = (
            p.read_bytes()
            if not p.is_symlink()
            else ("symlink:" + os.readlink(p)).encode()
        )
        mode = "x" if (not p.is_symlink() and os.access(p, os.X_OK)) else "-"
        h.update(f"{rel}\0{mode}\0{len(data)}\0".encode())
        h.update(data)


# --------------------------------------------------------------------------- apt sources


def debian_sources() -> tuple[str, str]:
    """(mirror, deb822 text): the host's deb.debian.org apt sources, for the base rootfs.

    Only stanzas whose URIs are on deb.debian.org are kept (not google/nodesource/...).
    MOAT_DEBIAN_MIRROR overrides the mirror debootstrap uses.
    """
    stanzas: list[str] = []
    if HOST_SOURCES.exists():
        for block in re.split(r"\n\s*\n", HOST_SOURCES.read_text()):
            if re.search(
                r"^URIs:.*deb\.debian\.org", block, re.MULTILINE | re.IGNORECASE
            ):
                stanzas.append(block.strip("\n"))
    if not stanzas:
        keyring = "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
        stanzas = [
            f"Types: deb\nURIs: {DEFAULT_MIRROR}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n{keyring}",
            f"Types: deb\nURIs: {SECURITY_MIRROR}\nSuites: {SUITE}-security\nComponents: main\n{keyring}",
        ]
    mirror = os.environ.get("MOAT_DEBIAN_MIRROR", "")
    if not mirror:
        for block in stanzas:
            suites = re.search(r"^Suites:\s*(.*)$", block, re.MULTILINE | re.IGNORECASE)
            uris = re.search(r"^URIs:\s*(.*)$", block, re.MULTILINE | re.IGNORECASE)
            if suites and uris and SUITE in suites.group(1).split():
                mirror = uris.group(1).split()[0]
                break
    return mirror or DEFAULT_MIRROR, "\n\n".join(stanzas) + "\n"


# --------------------------------------------------------------------------- images


@dataclass
class Image:
    name: str
    tag: str
    directory: Path
    deps: list[str] = field(default_factory=list)  # tags this image is built FROM
    hash: str = ""
    aliases: tuple[str, ...] = ()  # more tags for the same image (the TAG file's further words)

    @property
    def is_base(self) -> bool:
        return self.name == BASE_NAME


def discover() -> dict[str, Image]:
    images = {BASE_NAME: Image(BASE_NAME, BASE_TAG, BASE_DIR)}
    if IMAGES_DIR.is_dir():
        for d in sorted(IMAGES_DIR.iterdir()):
            dockerfile = d / "Dockerfile"
            if not dockerfile.is_file():
                continue
            tag_file = d / "TAG"
            tags = tag_file.read_text().split() if tag_file.exists() else []
            img = Image(d.name, tags[0] if tags else f"moat-test/{d.name}:latest", d, aliases=tuple(tags[1:]))
            stages = set()
            for m in re.finditer(
                r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?",
                dockerfile.read_text(),
                re.IGNORECASE | re.MULTILINE,
            ):
                ref = m.group(1)
                if ref not in stages and ref.lower() != "scratch":
                    img.deps.append(ref)
                if m.group(2):
                    stages.add(m.group(2))
            images[img.name] = img
    return images


def compute_hashes(images: dict[str, Image], sources: tuple[str, str]) -> None:
    by_tag = {tag: i for i in images.values() for tag in (i.tag, *i.aliases)}
    done: dict[str, str] = {}

    def h_of(img: Image, stack: tuple = ()) -> str:
        if img.name in done:
            return done[img.name]
        if img.name in stack:
            raise BuildError(f"FROM cycle: {' -> '.join((*stack, img.name))}")
        h = hashlib.sha256()
        h.update(f"{RECIPE_VERSION}\0{img.tag}\0".encode())
        if img.is_base:
            mirror, text = sources
            h.update(f"suite={SUITE}\0mirror={mirror}\0sources={text}\0".encode())
        for dep in sorted(set(img.deps)):
            if dep in by_tag:
                h.update(
                    f"from {dep} {h_of(by_tag[dep], (*stack, img.name))}\0".encode()
                )
            else:  # not ours: pin to whatever local image the tag names now
                proc = docker(
                    "image", "inspect", "--format", "{{.Id}}", dep, check=False
                )
                if proc.returncode != 0:
                    raise BuildError(
                        f"image {img.tag}: FROM {dep} is neither built here nor present "
                        "locally (no registry is reachable)"
                    )
                h.update(f"from {dep} {proc.stdout.strip()}\0".encode())
        hash_tree(h, img.directory)
        done[img.name] = h.hexdigest()
        return done[img.name]

    for img in images.values():
        img.hash = h_of(img)


def build_base(img: Image, sources: tuple[str, str]) -> str:
    """Returns a short description of what was done."""
    mirror, text = sources
    tar = CACHE_DIR / f"rootfs-{SUITE}-{img.hash[:16]}.tar"
    log = LOG_DIR / "base.log"
    how = "imported from cached rootfs"
    if not tar.exists():
        how = "debootstrapped and imported"
        say(
            f"image {img.tag}: building (debootstrap {SUITE} from {mirror}, ~30 s; log {log})"
        )
        if shutil.which("debootstrap") is None:
            install_debootstrap(log)
        src_file = CACHE_DIR / f"debian.sources.{os.getpid()}"
        src_file.write_text(text)
        partial = tar.with_suffix(".tar.partial")
        try:
            run_logged(
                [
                    "bash",
                    str(BASE_DIR / "build-rootfs.sh"),
                    SUITE,
                    mirror,
                    str(src_file),
                    str(partial),
                ],
                log,
            )
        finally:
            src_file.unlink(missing_ok=True)
        partial.rename(tar)
        for old in CACHE_DIR.glob(f"rootfs-{SUITE}-*.tar"):
            if old != tar:
                old.unlink(missing_ok=True)
    run_logged(
        [
            "docker",
            "import",
            "--change",
            f"ENV PATH={BASE_ENV_PATH}",
            "--change",
            'CMD ["/bin/bash"]',
            "--change",
            f"LABEL {LABEL}={img.hash}",
            str(tar),
            img.tag,
        ],
        log,
    )
    return how


def install_debootstrap(log: Path) -> None:
    if os.geteuid() != 0:
        raise BuildError("debootstrap is missing and installing it needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"]
    with open(log, "ab") as f:
        if (
            subprocess.run(
                cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=env
            ).returncode
            != 0
        ):
            subprocess.run(
                ["apt-get", "update"],
                check=False,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
            )
            if (
                subprocess.run(
                    cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=env
                ).returncode
                != 0
            ):
                raise BuildError("apt-get install debootstrap failed\n" + tail(log, 20))


def fetch_inputs(img: Image, context: Path) -> None:
    """Download the files an image's ``FETCH`` lists (``URL SHA256 NAME`` per line) into its build
    context, each checked against its sha256. Downloads run here, on the host, which trusts this
    machine's TLS-inspecting egress proxy; a build's own curl would not. Cached by checksum."""
    fetch = img.directory / "FETCH"
    if not fetch.exists():
        return
    downloads = CACHE_DIR / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    for line in fetch.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        url, sha256, name = line.split()
        cached = downloads / sha256
        if not cached.exists() or hashlib.sha256(cached.read_bytes()).hexdigest() != sha256:
            say(f"image {img.tag}: fetching {url}")
            partial = cached.with_suffix(".part")
            with urllib.request.urlopen(url, timeout=120) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
            got = hashlib.sha256(partial.read_bytes()).hexdigest()
            if got != sha256:
                partial.unlink()
                raise BuildError(f"image {img.tag}: {url} has sha256 {got}, FETCH pins {sha256}")
            partial.rename(cached)
        shutil.copyfile(cached, context / name)


def build_service(img: Image) -> str:
    log = LOG_DIR / f"{img.name}.log"
    say(f"image {img.tag}: building (log {log})")
    if (img.directory / "FETCH").exists():
        with tempfile.TemporaryDirectory(prefix=f"moat-build-{img.name}-") as tmp:
            context = Path(tmp) / "context"
            shutil.copytree(img.directory, context)
            fetch_inputs(img, context)
            return _docker_build(img, context, log)
    return _docker_build(img, img.directory, log)


def _docker_build(img: Image, context: Path, log: Path) -> str:
    run_logged(
        [
            "docker",
            "build",
            "--network",
            "host",
            "--rm",
            "--force-rm",
            "--label",
            f"{LABEL}={img.hash}",
            "-t",
            img.tag,
            *(arg for alias in img.aliases for arg in ("-t", alias)),
            str(context),
        ],
        log,
    )
    return "built"


def ensure_image(img: Image, force: bool, sources: tuple[str, str]) -> bool:
    """Returns True if something was built."""
    t0 = time.monotonic()
    current = image_label(img.tag)
    if current == img.hash and not force and all(image_label(a) == img.hash for a in img.aliases):
        say(
            f"image {img.tag}: up to date ({img.hash[:12]}) [{time.monotonic() - t0:.1f}s]"
        )
        return False
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / (f"{img.name}.log")
    log.write_text(
        f"# {time.strftime('%F %T')} building {img.tag} hash {img.hash} "
        f"(was {current!r})\n"
    )
    how = build_base(img, sources) if img.is_base else build_service(img)
    got = image_label(img.tag)
    if got != img.hash:
        raise BuildError(
            f"image {img.tag}: after the build its {LABEL} label is {got!r}, expected {img.hash}"
        )
    say(f"image {img.tag}: {how} in {time.monotonic() - t0:.1f}s ({img.hash[:12]})")
    return True


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "names",
        nargs="*",
        help="images to ensure (directory names, 'base'); default all",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="rebuild the named (or all) images even if up to date",
    )
    ap.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=int(os.environ.get("MOAT_ENGINE_JOBS", "3")),
        help="service images built in parallel (default 3)",
    )
    ap.add_argument(
        "--list",
        action="store_true",
        help="print name, tag and input hash of each image and exit",
    )
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        sources = debian_sources()
        images = discover()
        compute_hashes(images, sources)
        if args.list:
            for img in images.values():
                print(f"{img.name}\t{img.tag}\t{img.hash}\t{','.join(img.deps) or '-'}")
            return 0
        unknown = [n for n in args.names if n not in images]
        if unknown:
            raise BuildError(
                f"unknown image(s) {', '.join(unknown)}; known: {', '.join(images)}"
            )

        by_tag = {tag: i for i in images.values() for tag in (i.tag, *i.aliases)}
        wanted: dict[str, Image] = {}

        def want(img: Image) -> None:
            for dep in img.deps:
                if dep in by_tag:
                    want(by_tag[dep])
            wanted.setdefault(img.name, img)

        for img in [images[n] for n in args.names] if args.names else images.values():
            want(img)
        forced = set(args.names or images) if args.force else set()

        # Build in waves: an image starts once every image it is FROM is done.
        pending = dict(wanted)
        done: set[str] = set()
        built = failed = 0
        errors: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, args.jobs)
        ) as pool:
            while pending and not errors:
                ready = [
                    i
                    for i in pending.values()
                    if all(by_tag[d].name in done for d in i.deps if d in by_tag)
                ]
                if not ready:
                    raise BuildError(f"cannot order images {', '.join(pending)}")
                futures = {
                    pool.submit(ensure_image, i, i.name in forced, sources): i
                    for i in ready
                }
                for fut in concurrent.futures.as_completed(futures):
                    img = futures[fut]
                    pending.pop(img.name)
                    try:
                        built += bool(fut.result())
                        done.add(img.name)
                    except BuildError as e:
                        failed += 1
                        errors.append(f"image {img.tag}: FAILED: {e}")
                    except Exception as e:
                        failed += 1
                        errors.append(
                            f"image {img.tag}: FAILED: {type(e).__name__}: {e}"
                        )
        for e in errors:
            say(e, err=True)
        if errors:
            say(
                f"images: FAILED ({failed} failed, {len(pending)} not attempted) "
                f"[{time.monotonic() - t_start:.1f}s]",
                err=True,
            )
            return 1
        if built:
            # Old versions of rebuilt tags are left dangling; drop only those carrying our label.
            docker("image", "prune", "-f", "--filter", f"label={LABEL}", check=False)
        say(
            f"images: {len(wanted)} ensured, {built} built, {len(wanted) - built} up to date "
            f"[{time.monotonic() - t_start:.1f}s]"
        )
        return 0
    except BuildError as e:
        say(f"images: FAILED: {e}", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
