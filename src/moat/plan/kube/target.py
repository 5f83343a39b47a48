"""Where a Kubernetes run goes and what it runs: the inputs the renderer takes besides the plan."""

from __future__ import annotations

from dataclasses import dataclass

from moat.config.home import KubernetesSettings

AGENT_REPOSITORY = "moat-agent"  # <registry>/moat-agent:<the plan's content hash>
PROXY_REPOSITORY = "moat-proxy"
PROXY_UID = 65532  # the proxy sidecar's user: under strict policy the only one whose packets leave the pod


@dataclass(frozen=True)
class KubeTarget:
    namespace: str
    agent_image: str  # as the cluster pulls it
    proxy_image: str
    workspace: str  # copy | host
    storage_class: str | None
    cache_size: str
    image_pull_secrets: tuple[str, ...] = ()
    cache_access_mode: str = "ReadWriteMany"


def pushed(registry: str | None, local_tag: str, repository: str) -> str:
    """The name an image built here has in the cluster: in the registry under the same content hash,
    or (no registry: a cluster that sees this engine's images) the local tag itself."""
    if not registry:
        return local_tag
    return f"{registry.rstrip('/')}/{repository}:{local_tag.rpartition(':')[2]}"


def target_for(settings: KubernetesSettings, agent_tag: str, proxy_tag: str) -> KubeTarget:
    return KubeTarget(
        namespace=settings.namespace,
        agent_image=settings.image or pushed(settings.registry, agent_tag, AGENT_REPOSITORY),
        proxy_image=settings.proxy_image or pushed(settings.registry, proxy_tag, PROXY_REPOSITORY),
        workspace=settings.workspace,
        storage_class=settings.storage_class,
        cache_size=settings.cache_size,
        image_pull_secrets=tuple(settings.image_pull_secrets),
        cache_access_mode=settings.cache_access_mode,
    )
