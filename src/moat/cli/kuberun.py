"""``moat run --runtime kubernetes``: the plan rendered into a Pod and its objects, printed (``--dry-run``)
or run through the configured engine (``kubernetes.engine`` in MOAT_HOME/config.yaml)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from moat.config.home import KubernetesSettings, load_home_config
from moat.constants import MASK
from moat.errors import UsageError
from moat.plan.kube import dump, masked, render, target_for
from moat.plan.kube.manifests import Manifests
from moat.plan.kube.proxyimage import proxy_image
from moat.plan.model import ImageSpec, Plan

DRY_RUN_CA = f"<the run's own CA, made when it starts: {MASK}>"


def manifests_for(plan: Plan, settings: KubernetesSettings, *, real_ca: bool) -> tuple[Manifests, ImageSpec]:
    proxy = proxy_image(os.environ)
    target = target_for(settings, plan.image.tag, proxy.tag)
    if real_ca and plan.proxy is not None:
        from moat.proxy.ca import run_ca

        key_and_cert, cert = run_ca()
    else:
        key_and_cert, cert = DRY_RUN_CA, DRY_RUN_CA
    return render(plan, target, ca_cert=cert, ca_key_and_cert=key_and_cert), proxy


def print_manifests(plan: Plan, home: Path, as_json: bool) -> int:
    settings = load_home_config(home).kubernetes
    manifests, _ = manifests_for(plan, settings, real_ca=False)
    mask = plan.masker()
    if as_json:
        click.echo(json.dumps({"plan": plan.to_dict(), "manifests": [masked(o, mask) for o in manifests.objects]},
                              indent=2))
    else:
        click.echo(dump(manifests, mask), nl=False)
    return 0


def run_on_kubernetes(plan: Plan, home: Path, *, detach: bool, rebuild: bool) -> int:
    from moat.run.kube import KubeRun
    from moat.run.store import RunStore
    from moat.runtime.docker import DockerRuntime
    from moat.runtime.kubernetes.podman import PodmanBackend

    settings = load_home_config(home).kubernetes
    if detach:
        raise UsageError("-d is not built for the kubernetes runtime yet: its run is followed from here",
                         hint="Run without -d.")
    if plan.interactive:
        raise UsageError("an interactive run is not built for the kubernetes runtime yet",
                         hint="Give a command (moat run --runtime kubernetes . -- CMD) or set interactive: false.")
    if settings.engine != "podman":
        raise UsageError("the cluster engine (the Kubernetes API through its official client) is not built yet;"
                          " kubernetes.engine: podman runs the same pod on this machine",
                          hint="Set kubernetes.engine: podman in MOAT_HOME/config.yaml, or print the manifests with"
                               " --dry-run and apply them with your own tooling.")
    if settings.registry:
        raise UsageError("kubernetes.registry: pushing images is not built yet; the podman engine takes the local"
                         " engine's images", hint="Remove kubernetes.registry from MOAT_HOME/config.yaml.")
    manifests, proxy = manifests_for(plan, settings, real_ca=True)
    docker = DockerRuntime()
    say = _say
    wanted = ((plan.image, not settings.image), (proxy, plan.proxy is not None and not settings.proxy_image))
    for image, build in wanted:
        if build and (rebuild or not docker.image_exists(image.tag)):
            say(f"building {image.tag}")
            docker.build_image(image, {"moat.role": "image"}, lambda _line: None, no_cache=rebuild)
    record = RunStore(home).create(plan.run_id, plan.masker(), runtime="kubernetes", name=plan.name,
                                   workspace=str(plan.workspace), command=list(plan.command))
    record.update(state="running")
    run = KubeRun(plan, manifests, PodmanBackend(home), write=_write, say=say, record=record.dir,
                  copy_workspace=settings.workspace == "copy")
    state, code = "failed", None
    try:
        code = run.execute()
        state = "exited"
        return code
    except KeyboardInterrupt:
        state = "interrupted"
        return 130
    finally:
        record.update(state=state, exit_code=code, timings=run.timings.steps)
        record.close()


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _say(text: str) -> None:
    click.echo(f"moat: {text}", err=True)
