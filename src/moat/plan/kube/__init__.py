"""A run on Kubernetes, as data: the plan rendered into the objects a cluster applies (see
``manifests``), and their YAML as ``moat run --dry-run --runtime kubernetes`` prints it."""

from __future__ import annotations

import io
from typing import Any

from moat.constants import MASK
from moat.masking import Masker
from moat.plan.kube.manifests import Manifests, render
from moat.plan.kube.target import KubeTarget, target_for

__all__ = ["KubeTarget", "Manifests", "dump", "render", "target_for"]


def masked(obj: dict[str, Any], mask: Masker) -> dict[str, Any]:
    """An object as it may be shown: a Secret's values replaced whole, any secret elsewhere masked."""
    if obj.get("kind") == "Secret":
        return {**obj, "stringData": dict.fromkeys(obj.get("stringData", {}), MASK)}
    shown: dict[str, Any] = _mask(obj, mask)
    return shown


def _mask(value: Any, mask: Masker) -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, mask) for v in value]
    if isinstance(value, str):
        return mask.text(value)
    return value


def dump(manifests: Manifests, mask: Masker) -> str:
    """Every object as one YAML stream (``---`` between them), secrets masked: for review, or for
    ``kubectl apply -f -`` once the masked Secrets are filled in."""
    from ruamel.yaml import YAML  # noqa: PLC0415 — only the dry run prints YAML

    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # a script stays one scalar
    out = io.StringIO()
    yaml.dump_all([masked(o, mask) for o in manifests.objects], out)
    return out.getvalue()
