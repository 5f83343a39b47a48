"""Warm services: a run's service starts from a template of its initialised data, not afresh.

Making a template (once per image and settings, after a run whose agent finished, see
``run.execution``): the service's own image, settings and command, with a throwaway password and
no network; once its readiness check passes it is stopped as the engine stops it (a clean
shutdown), and each data path is copied out into ``MOAT_HOME/cache/.warm`` (``cache.warm``).

Starting from one: the sidecar's data paths are still in memory (tmpfs); a wrapper entrypoint
unpacks the template into them, then runs the image's own entrypoint and command, which find the
data initialised and skip their first-run setup. Before the readiness check (the catalog's, with the
run's credentials) may pass, the run's credentials are set over the local socket (``plan.warm``).
"""

from __future__ import annotations

import contextlib
import functools
import posixpath
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from moat.cache.warm import Template, WarmCache, template_key
from moat.errors import EngineError, MoatError
from moat.masking import Masker
from moat.plan.containers import ContainerSpec, Mount
from moat.plan.model import ProbeSpec, ServiceSpec
from moat.plan.warm import REKEY_REFUSED, SEED_DIR, TEMPLATE_PASSWORD_VAR, WarmSpec
from moat.runtime.base import ImageConfig, Runtime
from moat.services.readiness import Aborted, wait_ready

STOP_TIMEOUT = 60.0  # seconds a template's service has to shut down cleanly


class TemplateFailed(MoatError):
    """A template could not be made (the run is over: said, and the next run tries again)."""


def key_of(warm: WarmSpec, image: ImageConfig) -> str:
    return template_key(warm.settings, image.id)


def seeded(spec: ServiceSpec, template: Template, image: ImageConfig) -> ContainerSpec:
    """The sidecar, unpacking ``template`` into its (in-memory) data paths before the image's own
    entrypoint and command run. ``tar`` runs as the image's user (root in the official images), so
    the files keep the owners the service gave them."""
    container = spec.container
    command = container.command if container.command is not None else image.cmd
    lines = ["set -e"]
    # The template's directory (a sandbox binds directories only); its archives are read from it.
    mounts = [*container.mounts, Mount(str(template.path), SEED_DIR, read_only=True)]
    for index, path in enumerate(template.data_paths):
        archive = f"{SEED_DIR}/{index}.tar"
        # The archive's top directory is named after the path: unpacked into its parent.
        parent = posixpath.dirname(path.rstrip("/")) or "/"
        lines.append(f"tar -x -p --numeric-owner -f {archive} -C {parent}")
    lines.append('exec "$@"')
    return replace(container, entrypoint=("sh", "-c", "\n".join(lines), "moat-warm"),
                   command=(*image.entrypoint, *command), mounts=tuple(mounts))


def rekey_spec(spec: ServiceSpec, template: Template) -> ServiceSpec:
    """``spec`` whose readiness check first sets the run's credentials, then runs the catalog's check
    with them, in one exec (each costs tens of milliseconds of a starting service's time)."""
    assert spec.warm is not None
    rekey, probe = spec.warm.rekey, spec.probe
    command = ("sh", "-c", f'{rekey.script}\nexec "$@"', "moat-rekey", *probe.command)
    env = {**probe.env, **rekey.env, TEMPLATE_PASSWORD_VAR: template.password}
    return replace(spec, probe=ProbeSpec(command, env, probe.expect, refused=REKEY_REFUSED))


def make_missing(runtime: Runtime, services: tuple[ServiceSpec, ...], cache: WarmCache, labels: Mapping[str, str],
                 scratch: Path, abort: threading.Event, masker: Masker, say: Callable[[str], None],
                 warn: Callable[[str], None]) -> list[str]:
    """The templates ``services`` lack, made one after the other (until ``abort``); what was made."""
    made: list[str] = []
    for spec in services:
        if spec.warm is None or abort.is_set():
            continue
        started = time.monotonic()
        begun = f"making {spec.name}'s warm template for the next runs (once per image and settings)"
        try:
            template = make_template(runtime, spec, cache, labels, scratch, abort, masker,
                                     on_start=functools.partial(say, begun))
        except Aborted:
            return made
        except MoatError as exc:
            warn(f"{spec.name}'s warm template was not made; the next run tries again: {exc.message}")
            continue
        except OSError as exc:  # MOAT_WARM_CACHE unusable (full, read-only, not a directory)
            warn(f"{spec.name}'s warm template was not made: {exc.strerror or exc}: {exc.filename or cache.root}")
            continue
        if template is not None:
            made.append(spec.name)
            say(f"{spec.name}'s warm template made in {time.monotonic() - started:.1f}s")
    return made


def make_template(runtime: Runtime, spec: ServiceSpec, cache: WarmCache, labels: Mapping[str, str],
                  scratch: Path, abort: threading.Event, masker: Masker,
                  on_start: Callable[[], None] = lambda: None) -> Template | None:
    """Initialise ``spec``'s template, unless one exists or another run is making it (None then).
    Whatever it creates is removed before it returns; a failure raises ``TemplateFailed``.
    ``scratch``: a private directory the runtime may keep the template's network's files in."""
    warm = spec.warm
    assert warm is not None
    image = runtime.image_config(spec.image)
    key = key_of(warm, image)
    with cache.making(warm.service, key) as mine:
        if not mine or cache.broken(warm.service, key) or cache.find(warm.service, key) is not None:
            return None
        on_start()
        masker.add([warm.template_password])
        with contextlib.ExitStack() as made:
            if warm.template_network is not None:
                runtime.create_network(warm.template_network, {**warm.template.labels, **labels}, str(scratch))
                made.callback(runtime.remove_network, warm.template_network)
            return _initialise(runtime, spec, warm, image, key, cache, labels, abort, masker)
    return None  # not reached: the block returns (mypy cannot tell an ExitStack suppresses nothing)


def _initialise(runtime: Runtime, spec: ServiceSpec, warm: WarmSpec, image: ImageConfig, key: str, cache: WarmCache,
                labels: Mapping[str, str], abort: threading.Event, masker: Masker) -> Template:
    container_id = runtime.create_container(warm.template, labels)
    try:
        runtime.start_container(container_id)
        command, env, expect = warm.template_probe
        template_spec = replace(spec, container=warm.template, probe=ProbeSpec(command, env, expect), warm=None)
        try:
            wait_ready(runtime, container_id, template_spec, warm.template.network, abort, masker)
        except MoatError as exc:
            raise TemplateFailed(f"{spec.name}'s template did not start: {exc.message}") from None
        runtime.stop_container(container_id, STOP_TIMEOUT)
        state = runtime.state(container_id)
        if state.running or state.exit_code != 0:
            raise TemplateFailed(f"{spec.name}'s template did not shut down cleanly (exit {state.exit_code})")
        parts = [runtime.export_path(container_id, path) for path in warm.data_paths]
        try:
            return cache.store(warm.service, key, parts, warm.template_password, warm.data_paths, image.id,
                               warm.settings)
        except OSError as exc:
            raise TemplateFailed(f"{spec.name}'s template could not be saved: {exc}") from None
        except EngineError as exc:
            raise TemplateFailed(f"{spec.name}'s template could not be copied out: {exc.message}") from None
    finally:
        runtime.remove_container(container_id)
