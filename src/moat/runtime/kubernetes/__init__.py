"""The kubernetes runtime's engines: the cluster's API (``cluster``) or ``podman kube play`` here
(``podman``), behind one ``PodBackend``; which one a run uses is MOAT_HOME/config.yaml's choice, and
its record says where its pod went."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moat.config.home import KubernetesSettings
from moat.runtime.kubernetes.backend import PodBackend


def backend_for(settings: KubernetesSettings, home: Path) -> PodBackend:
    return backend_at(settings.engine, settings.namespace, settings.context, home)


def backend_at(engine: str, namespace: str, context: str | None, home: Path) -> PodBackend:
    if engine == "podman":
        from moat.runtime.kubernetes.podman import PodmanBackend  # noqa: PLC0415 — only where it is used

        return PodmanBackend(home)
    from moat.runtime.kubernetes.cluster import ClusterBackend  # noqa: PLC0415 — imports the client

    return ClusterBackend(namespace, context)


def where(metadata: Mapping[str, Any]) -> tuple[str, str, str | None, str] | None:
    """(engine, namespace, context, pod) of a recorded Kubernetes run; None for any other run."""
    if metadata.get("runtime") != "kubernetes" or not isinstance(metadata.get("kubernetes"), dict):
        return None
    info = metadata["kubernetes"]
    return (str(info.get("engine") or "cluster"), str(info.get("namespace") or "default"),
            info.get("context") or None, str(info.get("pod") or ""))
