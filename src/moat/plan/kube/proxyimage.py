"""The proxy sidecar's image: moat's proxy package and mitmproxy, on the pod base image.

Built like the agent's image (content-hash tag: the Dockerfile and every file of moat's proxy code
it copies), then pushed where the cluster pulls from; ``kubernetes.proxy_image`` names a prebuilt one
instead. It also carries iptables, for the strict pod's egress init container.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from moat.plan.buildca import build_ca
from moat.plan.dockerfile import BUILD_CA_FILE
from moat.plan.kube.target import PROXY_UID
from moat.plan.model import ImageSpec
from moat.plan.pod import POD_BASE_IMAGE

PROXY_IMAGE_REPO = "moat/proxy"
MITMPROXY = "mitmproxy==11.0.2"  # the newest for Python 3.11, as moat's own proxy virtualenv has it
CEL = "cel-python>=0.5"


def _sources() -> dict[str, str]:
    """moat's Python files (the proxy imports a few of its modules; the package is small)."""
    package = Path(__file__).resolve().parents[2]
    return {f"moat/{p.relative_to(package).as_posix()}": p.read_text()
            for p in sorted(package.rglob("*.py")) if "__pycache__" not in p.parts}


def proxy_image(host_env: Mapping[str, str]) -> ImageSpec:
    """``host_env``: MOAT_BUILD_CA_CERTS, the CAs a build behind a TLS-inspecting proxy must trust."""
    from moat.plan.build import image_tag  # noqa: PLC0415 — build imports the kube traits' module

    ca = build_ca(host_env)
    trust = ((f"COPY {BUILD_CA_FILE} /usr/local/share/ca-certificates/{BUILD_CA_FILE}",
              "RUN update-ca-certificates >/dev/null") if ca else ())
    pip_cert = "PIP_CERT=/etc/ssl/certs/ca-certificates.crt " if ca else ""
    dockerfile = "\n".join((
        f"FROM {POD_BASE_IMAGE}",
        "ENV DEBIAN_FRONTEND=noninteractive",
        "RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv iptables"
        " ca-certificates && rm -rf /var/lib/apt/lists/*",
        *trust,
        f"RUN python3 -m venv /opt/moat && {pip_cert}/opt/moat/bin/pip install --no-cache-dir"
        f" --disable-pip-version-check '{MITMPROXY}' '{CEL}'",
        "COPY moat /opt/moat-src/moat",
        "ENV PYTHONPATH=/opt/moat-src PATH=/opt/moat/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        " PYTHONDONTWRITEBYTECODE=1",
        f"USER {PROXY_UID}:{PROXY_UID}",
        "",
    ))
    context = {**_sources(), **({BUILD_CA_FILE: ca} if ca else {})}
    tag = image_tag([], dockerfile, context).replace("moat/run:", f"{PROXY_IMAGE_REPO}:")
    return ImageSpec(tag, POD_BASE_IMAGE, dockerfile, (), PROXY_UID, PROXY_UID, context=context)
