"""A run's Pod on this machine, by ``podman kube play`` (``kubernetes.engine: podman``): the manifests a
cluster would get, for trying them without one, and for moat's own end-to-end tests.

Podman 4.3 (Debian 12's) plays a Pod but not all of it, so what it lacks is done here, the way the
kubelet would: a Secret or ConfigMap volume (it crashes on the first) becomes a private directory of
its files, a ``secretKeyRef`` the value itself (as Docker runs hold their services' passwords),
``$(VAR)`` in a command is expanded, ``hostAliases`` (ignored without a network) become the
containers' /etc/hosts. The pod has no network but loopback (``--network none``): the proxy sidecar
can reach nothing beyond this machine's pod either — a pod for a cluster, tried locally.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from moat.constants import LABEL_HOME, LABEL_RUN_ID
from moat.errors import EngineError
from moat.files import private_dir, write_private
from moat.plan.kube.manifests import Manifests
from moat.plan.kube.target import PROXY_UID
from moat.runtime.kubernetes.backend import ContainerStatus, PodStatus, RunPod

_EXPANSION = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
PLAY_TIMEOUT = 120
ANNOTATION_MAX = 63
PODMAN_FILES = "podman-pods"  # under MOAT_HOME: each pod's Secret and ConfigMap files


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's expansion of a command or argument: ``$(NAME)`` of a defined variable, ``$$`` → ``$``."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))
    return _EXPANSION.sub(one, text)


def playable(manifests: Manifests, files: Path, cache: Path) -> dict[str, Any]:
    """The Pod as podman 4.3 plays it, its Secrets' and ConfigMaps' files written under ``files``."""
    data = {o["metadata"]["name"]: (o["kind"], o.get("stringData") or o.get("data") or {})
            for o in manifests.objects if o["kind"] in ("Secret", "ConfigMap")}
    pod: dict[str, Any] = json.loads(json.dumps(manifests.pod))
    pod["metadata"].pop("namespace", None)
    # podman 4.3 refuses an annotation over 63 characters (Kubernetes takes 256 KiB): a long one (the
    # workspace's path) is left out of the local pod; the run's record has it.
    annotations = pod["metadata"].get("annotations") or {}
    pod["metadata"]["annotations"] = {k: v for k, v in annotations.items() if len(v) <= ANNOTATION_MAX}
    spec = pod["spec"]
    volumes: dict[str, dict[str, Any]] = {v["name"]: v for v in spec.get("volumes", [])}
    dirs: dict[str, Path] = {}
    for name, volume in volumes.items():
        source = volume.get("secret", {}).get("secretName") or volume.get("configMap", {}).get("name")
        claim = volume.get("persistentVolumeClaim")
        if source:
            kind, items = data[source]
            directory = files / name
            directory.mkdir(mode=0o700)
            for key, text in items.items():
                (directory / key).write_text(text)
                os.chmod(directory / key, 0o400 if kind == "Secret" else 0o444)
            if kind == "Secret" and os.geteuid() == 0:  # only the proxy mounts it: its user reads it, nobody else
                os.chown(directory, PROXY_UID, PROXY_UID)
                for key in items:
                    os.chown(directory / key, PROXY_UID, PROXY_UID)
            else:
                os.chmod(directory, 0o755)  # noqa: S103 — a ConfigMap's files are for any container's user
            dirs[name] = directory
        elif claim:
            cache.mkdir(parents=True, exist_ok=True)
            dirs[name] = cache
    hosts = files / "hosts"
    names = [h for alias in spec.pop("hostAliases", []) for h in alias["hostnames"]]
    hosts.write_text("127.0.0.1\tlocalhost " + " ".join(names) + "\n::1\tlocalhost ip6-localhost\n")
    os.chmod(hosts, 0o444)
    new_volumes = [v for n, v in volumes.items() if n not in dirs]
    new_volumes.append({"name": "moat-hosts", "hostPath": {"path": str(hosts), "type": "File"}})
    for container in (*spec.get("initContainers", []), *spec["containers"]):
        env: dict[str, str] = {}
        for entry in container.get("env", []):
            ref = entry.pop("valueFrom", {}).get("secretKeyRef")
            if ref:  # a Secret's value is taken as it is
                entry["value"] = data[ref["name"]][1][ref["key"]]
            else:  # a plain value is expanded as the kubelet does, with the variables defined before it
                entry["value"] = expand(entry["value"], env)
            env[entry["name"]] = entry["value"]
        for key in ("command", "args"):
            if key in container:
                container[key] = [expand(a, env) for a in container[key]]
        container.pop("readinessProbe", None)  # a healthcheck podman never runs here (no systemd)
        mounts = []
        for mount in container.get("volumeMounts", []):
            if mount["name"] in dirs:
                path = dirs[mount["name"]] / mount.pop("subPath", "")
                name = f"{mount['name']}-{len(new_volumes)}"
                new_volumes.append({"name": name, "hostPath": {"path": str(path).rstrip("/")}})
                mount["name"] = name
            mounts.append(mount)
        mounts.append({"name": "moat-hosts", "mountPath": "/etc/hosts", "readOnly": True})
        container["volumeMounts"] = mounts
    spec["volumes"] = new_volumes
    return pod


class PodmanBackend:
    name = "podman"

    def __init__(self, home: Path, podman: str = "podman", docker: str = "docker") -> None:
        self.home = home
        self.podman = podman
        self.docker = docker

    def _run(self, args: list[str], what: str, timeout: float = 60, stdin: bytes | None = None,
             check: bool = True) -> subprocess.CompletedProcess[bytes]:
        try:
            done = subprocess.run([self.podman, *args], input=stdin, capture_output=True, timeout=timeout,
                                  check=False)
        except FileNotFoundError:
            raise EngineError("podman is not installed (kubernetes.engine: podman runs pods with it)",
                              hint="Install it (apt-get install podman), or set kubernetes.engine: cluster.") from None
        except subprocess.TimeoutExpired:
            raise EngineError(f"podman did not finish {what} in {timeout:.0f} s") from None
        if check and done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip().splitlines()
            raise EngineError(f"podman failed {what}: {detail[-1] if detail else f'exit {done.returncode}'}")
        return done

    def ping(self) -> None:
        self._run(["info", "--format", "{{.Version.Version}}"], "answering")

    def _ensure_image(self, ref: str) -> None:
        """An image of the local Docker engine (moat builds there) copied into podman's store."""
        if self._run(["image", "exists", ref], "looking for an image", check=False).returncode == 0:
            return
        save = subprocess.Popen([self.docker, "save", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert save.stdout is not None
        try:
            done = subprocess.run([self.podman, "load", "-q"], stdin=save.stdout, capture_output=True,
                                  timeout=600, check=False)
        finally:
            save.stdout.close()
            save.wait()
        if save.returncode != 0 or done.returncode != 0:
            raise EngineError(f"the image {ref} is neither in podman nor in the local Docker engine",
                              hint="Build or load it first (moat builds the agent's and the proxy's images).")

    def _files_of(self, pod: str) -> Path:
        """The pod's Secrets and ConfigMaps as files: under MOAT_HOME, where any moat finds them again
        (a killed run's are removed by `moat clean`, `stop` or `destroy`, not only by their run)."""
        return self.home / PODMAN_FILES / pod

    def apply(self, manifests: Manifests) -> None:
        pod = manifests.pod
        name = pod["metadata"]["name"]
        for container in (*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]):
            self._ensure_image(container["image"])
        files = self._files_of(name)
        private_dir(files.parent)
        shutil.rmtree(files, ignore_errors=True)
        files.mkdir(mode=0o711)
        os.chmod(files, 0o711)  # noqa: S103 — the containers' users reach their own files, list none
        try:
            played = playable(manifests, files, self.home / "cache")
            document = files / "pod.json"
            write_private(document, json.dumps(played))  # JSON is YAML
            self._run(["kube", "play", "--network", "none", str(document)], f"starting the pod {name}",
                      timeout=PLAY_TIMEOUT)
        except BaseException:
            with contextlib.suppress(EngineError):
                self.delete(name)
            raise

    def status(self, pod: str) -> PodStatus:
        """One `podman ps` for every container of the pod (a look per container costs ~50 ms each)."""
        done = self._run(["ps", "-a", "--filter", f"pod={pod}", "--format", "json"], "inspecting the pod")
        listed = json.loads(done.stdout or b"[]")
        containers = []
        for entry in listed:
            names = entry.get("Names") or []
            full = names[0] if names else ""
            if not full.startswith(f"{pod}-"):
                continue  # the infra container
            status = entry.get("State", "")
            word = "running" if status == "running" else "terminated" if status in ("exited", "stopped") else "waiting"
            containers.append(ContainerStatus(full[len(pod) + 1:], word, "",
                                              int(entry.get("ExitCode") or 0) if word == "terminated" else None))
        if not containers:
            return PodStatus("Gone")
        phase = "Running" if any(c.state == "running" for c in containers) else "Pending"
        if all(c.state == "terminated" for c in containers):
            phase = "Succeeded" if all(c.exit_code == 0 for c in containers) else "Failed"
        return PodStatus(phase, tuple(containers))

    def exec(self, pod: str, container: str, argv: tuple[str, ...], stdin: bytes | None = None,
             timeout: float = 60) -> tuple[int, bytes]:
        done = self._run(["exec", *(["-i"] if stdin is not None else []), f"{pod}-{container}", *argv],
                         f"running a command in {pod}/{container}", timeout=timeout, stdin=stdin, check=False)
        # A command's output is its stdout (a tar stream stays whole); stderr says why it failed.
        return done.returncode, done.stdout if done.returncode == 0 else done.stdout + done.stderr

    def logs(self, pod: str, container: str, follow: bool) -> Iterator[bytes]:
        process = subprocess.Popen([self.podman, "logs", *(["-f"] if follow else []), f"{pod}-{container}"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        try:
            yield from iter(lambda: process.stdout.readline() if process.stdout else b"", b"")
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait()

    def delete(self, pod: str, grace: float = 10, run_id: str | None = None) -> None:
        # Stopped first, then removed: `pod rm -f` alone takes ~3.4 s here, stop and rm ~0.3 s (measured).
        self._run(["pod", "stop", "-t", str(int(grace)), pod], f"stopping the pod {pod}", check=False,
                  timeout=grace + 60)
        removed = self._run(["pod", "rm", "-f", pod], f"removing the pod {pod}", check=False)
        shutil.rmtree(self._files_of(pod), ignore_errors=True)
        if removed.returncode != 0 and self._run(["pod", "exists", pod], "looking for a pod",
                                                 check=False).returncode == 0:
            detail = removed.stderr.decode(errors="replace").strip().splitlines()
            raise EngineError(f"podman could not remove the pod {pod}: {detail[-1] if detail else 'failed'}",
                              hint=f"podman pod rm -f {pod}")

    def remove_stray(self, kind: str, name: str) -> None:
        if kind == "files" and "/" not in name and name not in ("", ".", ".."):
            shutil.rmtree(self._files_of(name), ignore_errors=True)

    def strays(self, home: str) -> list[tuple[str, str, str]]:
        """Files of pods that are gone (a run killed between writing them and playing its pod)."""
        directory = self.home / PODMAN_FILES
        if not directory.is_dir():
            return []
        live = {p.name for p in self.pods()}
        return [("files", d.name, "") for d in sorted(directory.iterdir()) if d.name not in live]

    def pods(self, run_id: str | None = None) -> list[RunPod]:
        selector = f"label={LABEL_RUN_ID}" + (f"={run_id}" if run_id else "")
        done = self._run(["pod", "ps", "--filter", selector, "--format", "json"], "listing pods")
        return [RunPod(p["Name"], "", (p.get("Labels") or {}).get(LABEL_RUN_ID, ""), p.get("Status", ""),
                       str(p.get("Created", "")), (p.get("Labels") or {}).get(LABEL_HOME, ""))
                for p in json.loads(done.stdout or b"[]")]
