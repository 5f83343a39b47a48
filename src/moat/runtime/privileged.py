"""Removing files that containers wrote as root, for a user who is not root, through the engine."""

from __future__ import annotations

import uuid
from pathlib import Path

from moat.constants import LABEL_ROLE, LABEL_RUN_ID
from moat.errors import EngineError
from moat.ownership import owner_labels
from moat.plan.containers import ContainerSpec, Mount
from moat.runtime.docker import DockerRuntime

# Any small image present locally will do; these are tried in order.
CANDIDATE_IMAGES = ("debian:bookworm-slim", "busybox:latest", "alpine:latest")
MOUNT = "/moat-cache"


def remove_as_root(paths: list[Path], root: Path, home: Path) -> None:
    runtime = DockerRuntime()
    image = next((i for i in CANDIDATE_IMAGES if runtime.image_exists(i)), None)
    if image is None:
        raise EngineError(
            f"cannot remove {len(paths)} root-owned files under {root}: no helper image is available",
            hint=f"Remove them as root: sudo rm -rf {root}",
        )
    targets = tuple(f"{MOUNT}/{p.relative_to(root)}" for p in paths)
    spec = ContainerSpec(
        role="service",
        name=f"moat-cache-clean-{uuid.uuid4().hex[:12]}",
        image=image,
        labels={LABEL_RUN_ID: "cache-clean", LABEL_ROLE: "cache-clean"},
        network="none",
        command=("rm", "-rf", "--", *targets),
        mounts=(Mount(str(root), MOUNT),),
    )
    container = runtime.create_container(spec, owner_labels(home))
    try:
        runtime.start_container(container)
        code = runtime.wait(container)
    finally:
        runtime.remove_container(container)
    if code != 0:
        raise EngineError(f"removing root-owned files under {root} failed (exit {code})",
                          hint=f"Remove them as root: sudo rm -rf {root}")
