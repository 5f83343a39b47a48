"""The agent image's Dockerfile, generated from resolved dependencies.

Layer order puts what changes least first (apt, then runtimes, then packages, then the user), so
editing a pip package does not re-run apt.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from moat.catalog import Catalog, DepType, NpmTool, Runtime, Tool
from moat.catalog.deps import Dependency, quote_packages
from moat.constants import AGENT_HOME, AGENT_USER, WORKSPACE_MOUNT

# Always installed: TLS roots for anything that talks HTTPS.
BASE_APT = ("ca-certificates",)
# The build's extra certificate authorities (MOAT_BUILD_CA_CERTS), under this name in the context.
BUILD_CA_FILE = "moat-build-ca.crt"
# Tools that do not read the system's roots by default are pointed at them (node has its own copy,
# pip its certifi bundle) in the build's download steps only: the image's environment is the run's.
BUILD_CA_EXPORT = ("export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt"
                   " PIP_CERT=/etc/ssl/certs/ca-certificates.crt; ")


@dataclass(frozen=True)
class ImageInputs:
    base_image: str
    dependencies: tuple[Dependency, ...]
    uid: int
    gid: int
    # PEM text of certificate authorities the build must trust: behind a TLS-inspecting proxy,
    # npm's, pip's and curl's downloads fail without the proxy's CA. Baked into the image's roots.
    build_ca: str | None = None


def choose_base_image(deps: tuple[Dependency, ...], catalog: Catalog, override: str | None) -> str:
    """``base_image`` if set; a runtime's own image when exactly one runtime is declared; else Debian."""
    if override:
        return override
    runtimes = [d for d in deps if d.type is DepType.RUNTIME]
    if len(runtimes) == 1:
        entry = catalog.get(runtimes[0].name)
        assert isinstance(entry, Runtime) and runtimes[0].version
        return entry.base_image.replace("{version}", runtimes[0].version)
    return catalog.default_base_image


def render(inputs: ImageInputs, catalog: Catalog) -> str:
    deps = inputs.dependencies
    lines = [f"FROM {inputs.base_image}", "ENV DEBIAN_FRONTEND=noninteractive"]
    # Sorted: the order dependencies are listed in must not change the image (or its tag).
    runtimes = sorted((d for d in deps if d.type is DepType.RUNTIME), key=lambda d: d.name)
    # A runtime whose own image is the base needs no install step.
    to_install = [] if len(runtimes) == 1 else runtimes
    apt = set(BASE_APT)
    for dep in deps:
        entry = catalog.get(dep.name) if not dep.manager else None
        if isinstance(entry, Tool):
            apt.add(entry.apt)
    for dep in to_install:
        entry = catalog.get(dep.name)
        assert isinstance(entry, Runtime)
        apt.update(entry.install_apt)
    lines.append(
        "RUN apt-get update \\\n"
        f" && apt-get install -y --no-install-recommends {' '.join(sorted(apt))} \\\n"
        " && rm -rf /var/lib/apt/lists/*"
    )
    if inputs.build_ca:  # after apt (over plain HTTP, it brings update-ca-certificates), before any download
        lines += [f"COPY {BUILD_CA_FILE} /usr/local/share/ca-certificates/{BUILD_CA_FILE}",
                  "RUN update-ca-certificates >/dev/null"]
    trust = BUILD_CA_EXPORT if inputs.build_ca else ""
    for dep in to_install:
        entry = catalog.get(dep.name)
        assert isinstance(entry, Runtime) and dep.version
        lines += [line.replace("{version}", dep.version) for line in entry.install]
    npm_tools = sorted((d for d in deps if d.type is DepType.NPM), key=lambda d: d.name)
    if npm_tools:  # after the runtimes (npm comes with node), before the packages people change most
        specs = []
        for dep in npm_tools:
            entry = catalog.get(dep.name)
            assert isinstance(entry, NpmTool)
            specs.append(f"{entry.package}@{dep.version}" if dep.version else entry.package)
        lines.append(f"RUN {trust}npm install --global --no-fund --no-audit --no-update-notifier "
                     + " ".join(shlex.quote(spec) for spec in specs))
    for prefix in sorted({d.manager for d in deps if d.manager}):
        manager = catalog.dynamic(prefix)
        assert manager is not None
        packages = sorted((d for d in deps if d.manager == prefix), key=lambda d: d.name)
        lines.append(f"RUN {trust}" + manager.install.replace(
            "{packages}", quote_packages(packages, manager.version_separator)))
    lines += _user_lines(inputs.uid, inputs.gid)
    return "\n".join(lines) + "\n"


def _user_lines(uid: int, gid: int) -> list[str]:
    # The agent runs as the workspace owner's uid/gid so files it writes in the workspace are theirs.
    # Base images may already own that uid or gid (node's "node" is 1000): the user is replaced,
    # an existing group is reused.
    if uid == 0:
        # A root-owned workspace: root without capabilities (see plan.identity); its home is root's.
        return [f"RUN mkdir -p {WORKSPACE_MOUNT}", "ENV HOME=/root", f"USER 0:{gid}", f"WORKDIR {WORKSPACE_MOUNT}"]
    return [
        f"RUN set -e; existing=$(getent passwd {uid} | cut -d: -f1); "
        f'if [ -n "$existing" ]; then userdel "$existing"; fi; '
        f"getent group {gid} >/dev/null || groupadd -g {gid} {AGENT_USER}; "
        f"useradd -m -d {AGENT_HOME} -u {uid} -g {gid} -s /bin/bash {AGENT_USER}; "
        f"mkdir -p {WORKSPACE_MOUNT} && chown {uid}:{gid} {WORKSPACE_MOUNT}",
        f"ENV HOME={AGENT_HOME}",
        f"USER {uid}:{gid}",
        f"WORKDIR {WORKSPACE_MOUNT}",
    ]
