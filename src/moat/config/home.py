"""``MOAT_HOME/config.yaml``: the settings of this machine's moat, not of one workspace (where runs go
when they go to a cluster). Validated as strictly as moat.yaml: unknown keys, wrong types and bad
names are located errors with a did-you-mean; a missing file is the empty configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from moat.config.load import read_config_text
from moat.config.problems import translate
from moat.config.schema import IMAGE_REF_RE, matching
from moat.config.yamldoc import Marks, YamlProblem, load_document
from moat.errors import ConfigError, Located

HOME_CONFIG = "config.yaml"

# Kubernetes' names: a namespace, a context's name is free text but one line.
DNS_LABEL_RE = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN_RE = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
# host[:port][/path…]: a colon only in the host part (a tag is moat's to give: the content hash)
REGISTRY_RE = r"^[a-zA-Z0-9][a-zA-Z0-9.\-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._\-]*)*$"
QUANTITY_RE = r"^(0\.[0-9]*[1-9][0-9]*|[1-9][0-9]*(\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$"  # more than 0

Namespace = Annotated[str, matching(DNS_LABEL_RE, "a Kubernetes namespace (lowercase letters, digits and '-')")]
ObjectName = Annotated[str, matching(DNS_SUBDOMAIN_RE, "a Kubernetes name (lowercase letters, digits, '-', '.')")]
Registry = Annotated[str, matching(REGISTRY_RE, "a registry and path such as registry.example.com:5000/team, no tag")]
ImageRef = Annotated[str, matching(IMAGE_REF_RE, "an image reference such as registry.example.com/moat/agent:1")]
Quantity = Annotated[str, matching(QUANTITY_RE, "a Kubernetes quantity above 0, such as 20Gi")]
Line = Annotated[str, StringConstraints(min_length=1, pattern=r"^[^\x00-\x1f\x7f]+$")]


class KubernetesSettings(BaseModel):
    """Where and how runs with ``runtime: kubernetes`` go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The kubeconfig's context (KUBECONFIG honoured); unset: its current context.
    context: Line | None = None
    namespace: Namespace = "default"
    # Where the agent's image is pushed (<registry>/moat-agent:<content hash>); none: ``image`` must
    # name a prebuilt one, or the cluster must see the local engine's images (a single-node cluster).
    registry: Registry | None = None
    image: ImageRef | None = None  # a prebuilt agent image: nothing is built or pushed
    proxy_image: ImageRef | None = None  # the proxy sidecar's image (default: built and pushed like the agent's)
    storage_class: ObjectName | None = None  # the host cache's PersistentVolumeClaim ("" = the cluster's default)
    cache_size: Quantity = "20Gi"
    # ReadWriteMany lets runs on every node share the cache; a cluster whose storage has only
    # ReadWriteOnce keeps the runs that use it on one node at a time.
    cache_access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = "ReadWriteMany"
    # copy: the workspace is copied into the pod (the agent works on the copy; moat brings it back as a
    # snapshot); host: the node's own path is mounted (a single-node cluster on this machine).
    workspace: Literal["copy", "host"] = "copy"
    image_pull_secrets: list[ObjectName] = Field(default_factory=list)
    # cluster: the Kubernetes API; podman: the same manifests run here by `podman kube play` (no cluster).
    engine: Literal["cluster", "podman"] = "cluster"


def _empty_block(value: object) -> object:
    return {} if value is None else value  # "kubernetes:" with nothing under it: every default


class HomeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kubernetes: Annotated[KubernetesSettings, BeforeValidator(_empty_block)] = Field(
        default_factory=KubernetesSettings)


@dataclass(frozen=True)
class HomeConfig:
    file: Path | None
    settings: HomeSettings = field(default_factory=HomeSettings)

    @property
    def kubernetes(self) -> KubernetesSettings:
        return self.settings.kubernetes


def load_home_config(home: Path) -> HomeConfig:
    file = home / HOME_CONFIG
    try:
        text = read_config_text(file)
    except FileNotFoundError:
        return HomeConfig(None)
    return parse_home_config(text, file)


def parse_home_config(text: str, file: Path | None = None) -> HomeConfig:
    try:
        data, marks = load_document(text)
    except YamlProblem as problem:
        raise ConfigError(file, [problem.problem], hint=_HINT) from None
    if data is None:
        data, marks = {}, Marks()
    if not isinstance(data, dict):
        raise ConfigError(file, [Located((), "the file must be a mapping of keys such as 'kubernetes:'", 1, 1)],
                          hint=_HINT)
    try:
        settings = HomeSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file, translate(exc.errors(include_url=False), data, marks, HomeSettings),
                          hint=_HINT) from None
    return HomeConfig(file, settings)


_HINT = ("MOAT_HOME/config.yaml holds this machine's settings (kubernetes: context, namespace, registry, image,"
         " proxy_image, storage_class, cache_size, cache_access_mode, workspace, image_pull_secrets, engine);"
         " fix the keys named above.")
