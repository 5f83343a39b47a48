"""The kubernetes runtime (podman engine) against its floor and the Docker runtime, alternating, in one
process, on this machine.

    python benchmarks/kube.py [--runs N] [--json FILE]

Cases, each `moat run ... -- true` timed from process start to exit, for a workspace that declares
redis (a service to make ready) and whose workspace is copied into the pod:
- `kube`: `moat run --runtime kubernetes` with `kubernetes.engine: podman` (render, play, readiness
  by exec, copy in, gate, follow, snapshot out, delete);
- `floor`: the same pod's manifests, prepared beforehand, played by hand: `podman kube play`, wait
  for the agent's container to exit, `podman pod rm` — what any tool running this pod pays;
- `docker`: `moat run --runtime docker`, the same workspace (warm services: its usual way).
Prints medians, min/max and the ratios kube/floor and kube/docker (these machines are noisy:
compare ratios). The timings of the steps moat records for a pod run are printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moat.plan.kube.manifests import Manifests
from moat.runtime.kubernetes.podman import playable
from runtimes import run_once  # the same timing of `moat run --runtime R -- true`

ROOT = Path(__file__).resolve().parent.parent
MOAT = [sys.executable, "-m", "moat"]
WORKSPACE = "name: bench-kube\ndependencies: [redis]\nservices:\n  redis:\n    image: moat-test/redis:latest\n"
HOST_CAS = Path("/usr/local/share/ca-certificates")


def floor_pod(workspace: Path, env: dict[str, str], directory: Path) -> Path:
    """The pod moat would play for the workspace (its dry run's manifests), the agent's gate taken
    out: played by hand, it runs `true`. Its Secrets are masked in a dry run: the floor's redis gets
    '****' for a password, which it takes as one."""
    done = subprocess.run([*MOAT, "run", "--runtime", "kubernetes", "--dry-run", "--json", str(workspace)], env=env,
                          capture_output=True, text=True, check=True)
    objects = json.loads(done.stdout)["manifests"]
    pod = next(o for o in objects if o["kind"] == "Pod")
    for volume in pod["spec"]["volumes"]:  # the host's workspace, as kubernetes.workspace: host mounts it
        if volume["name"] == "workspace":
            volume.pop("emptyDir", None)
            volume["hostPath"] = {"path": str(workspace), "type": "Directory"}
    played = playable(Manifests(tuple(objects), {}, pod), directory, directory / "cache")
    agent = next(c for c in played["spec"]["containers"] if c["name"] == "agent")
    agent["command"], agent["args"] = ["true"], []
    agent["volumeMounts"] = [m for m in agent["volumeMounts"] if m["mountPath"] != "/run/moat-upload"]
    path = directory / "pod.json"
    path.write_text(json.dumps(played))
    return path


def floor_once(pod: Path) -> float:
    name = json.loads(pod.read_text())["metadata"]["name"]
    deadline = time.monotonic() + 120
    start = time.perf_counter()
    subprocess.run(["podman", "kube", "play", "--network", "none", str(pod)], capture_output=True, check=True)
    while True:  # as moat looks: one `podman ps` of the pod
        listed = subprocess.run(["podman", "ps", "-a", "--filter", f"name={name}-agent", "--format", "json"],
                                capture_output=True, text=True, check=False).stdout
        states = [c.get("State", "") for c in json.loads(listed or "[]")]
        state = states[0] if states else ""
        if state in ("exited", "stopped", "") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    subprocess.run(["podman", "pod", "stop", "-t", "0", name], capture_output=True, check=True)  # the fastest way
    subprocess.run(["podman", "pod", "rm", "-f", name], capture_output=True, check=True)  # out (measured)
    return time.perf_counter() - start


def summary(name: str, values: list[float]) -> dict[str, float]:
    result = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    print(f"  {name:<8} median {result['median']:.2f} s  (min {result['min']:.2f}, max {result['max']:.2f})")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="moat-bench-kube-") as temp:
        base = Path(temp)
        home = base / "home"
        home.mkdir()
        (home / "config.yaml").write_text("kubernetes:\n  engine: podman\n")
        workspace = base / "ws"
        workspace.mkdir()
        (workspace / "moat.yaml").write_text(WORKSPACE)
        os.chmod(base, 0o755)
        env = {**os.environ, "MOAT_HOME": str(home)}
        if any(HOST_CAS.glob("*.crt")):
            env["MOAT_BUILD_CA_CERTS"] = str(HOST_CAS)
        floor_dir = base / "floor"
        floor_dir.mkdir()
        pod = floor_pod(workspace, env, floor_dir)
        run_once("kubernetes", workspace, env)  # warm-up: images built and copied into podman
        run_once("docker", workspace, env)  # warm-up: the service's warm template
        floor_once(pod)
        times: dict[str, list[float]] = {"kube": [], "floor": [], "docker": []}
        for _ in range(args.runs):
            times["kube"].append(run_once("kubernetes", workspace, env))
            times["floor"].append(floor_once(pod))
            times["docker"].append(run_once("docker", workspace, env))
        steps: dict[str, list[float]] = {}
        for metadata in (home / "runs").glob("*/metadata.json"):
            data = json.loads(metadata.read_text())
            for step, seconds in (data.get("timings") or {}).items():
                if data.get("runtime") == "kubernetes":
                    steps.setdefault(step, []).append(seconds)
    print(f"moat run -- true, workspace with redis, {args.runs} runs each, alternating")
    result = {name: summary(name, values) for name, values in times.items()}
    ratios = {"kube/floor": result["kube"]["median"] / result["floor"]["median"],
              "kube/docker": result["kube"]["median"] / result["docker"]["median"]}
    print("  " + "  ".join(f"{k} x{v:.2f}" for k, v in ratios.items()))
    print("  kube steps (median s): " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in sorted(steps.items())))
    if args.json:
        args.json.write_text(json.dumps({"times": result, "ratios": ratios,
                                         "steps": {k: statistics.median(v) for k, v in steps.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
