"""Sandbox runtime against Docker runtime, in one process, alternating, on the same machine.

    python benchmarks/runtimes.py [--runs N] [--json FILE] [--runtimes sandbox,docker] [--moat-src DIR]
    python benchmarks/runtimes.py --layer runtime [--runs N]

`--layer cli` (the default) measures the wall time of `moat run --runtime R -- true` from process
start to exit, for an empty workspace, one that declares redis and one with postgres, mysql and
redis, after a warm-up of each (so the services start from their warm templates). The multi-service
case also times the sandbox with `warm: false` (every service initialised afresh, as every run was
before templates) and its floor: the same host programs started by a shell script
(`sandbox_floor.sh`: data in memory, no namespaces), cold and from data initialised beforehand.
`--moat-src` runs another checkout's moat (its `src/`), to compare before and after a change.
`--layer runtime` measures the sandbox runtime alone, in this process: network, services started at
once and waited for in parallel, a trivial agent, teardown.
Prints medians, min/max and the ratio sandbox/docker (these machines are noisy: compare ratios).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOAT = [sys.executable, "-m", "moat"]
SANDBOX_TRUE_GOAL = 0.30  # issue 14: `moat run --runtime sandbox -- true`, whole
SANDBOX_MULTI_WARM_GOAL = 0.8  # issue 14: the multi-service case in the sandbox, warm, whole
FLOOR_SCRIPT = ROOT / "benchmarks" / "sandbox_floor.sh"
WORKSPACE_UID = 1000  # the sandbox never runs as root: as root, workspaces belong to this uid
CASES = {
    "true": "name: bench-true\n",
    "redis": "name: bench-redis\ndependencies: [redis]\nservices:\n  redis:\n    image: moat-test/redis:latest\n",
    "multi": "name: bench-multi\ndependencies: [postgres, mysql, redis]\nservices:\n"
             "  postgres:\n    image: moat-test/postgres:latest\n  mysql:\n    image: moat-test/mysql:latest\n"
             "  redis:\n    image: moat-test/redis:latest\n",
}


def run_once(runtime: str, workspace: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([*MOAT, "run", "--runtime", runtime, str(workspace), "--", "true"], env=env,
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"moat run --runtime {runtime} failed:\n{done.stderr}")
    return elapsed


BWRAP_FLOOR = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
               "--dev", "/dev", "--tmpfs", "/tmp", "true"]


def bwrap_once() -> float:
    """The sandbox's floor for `-- true`: bubblewrap alone, the same namespaces, nothing of moat's."""
    start = time.perf_counter()
    subprocess.run(BWRAP_FLOOR, check=True, capture_output=True)
    return time.perf_counter() - start


def as_service_user(argv: list[str]) -> list[str]:
    """The floor's servers run as the sandbox's would: never as root (postgres refuses)."""
    if os.getuid() != 0:
        return argv
    return ["setpriv", f"--reuid={WORKSPACE_UID}", f"--regid={WORKSPACE_UID}", "--clear-groups", *argv]


def floor_script_once(mode: str, seed: Path) -> float:
    start = time.perf_counter()
    subprocess.run(as_service_user(["sh", str(FLOOR_SCRIPT), mode, *([str(seed)] if mode == "warm" else [])]),
                   check=True, capture_output=True, cwd="/")
    return time.perf_counter() - start


def afresh(config: str) -> str:
    """The same services, each initialised afresh (no warm template)."""
    return config.replace(":latest\n", ":latest\n    warm: false\n")


def workspace_for(scratch: Path, case: str, config: str) -> Path:
    workspace = scratch / case
    workspace.mkdir()
    (workspace / "moat.yaml").write_text(config)
    if os.getuid() == 0:
        scratch.chmod(0o711)  # the workspace's owner must reach it
        for path in (workspace, workspace / "moat.yaml"):
            os.chown(path, WORKSPACE_UID, WORKSPACE_UID)
    return workspace


def cli(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    runtimes = tuple(args.runtimes.split(","))
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="moat-bench-") as scratch:
        env = {**os.environ, "MOAT_HOME": str(Path(scratch) / "home")}
        if args.moat_src:
            env["PYTHONPATH"] = str(Path(args.moat_src).resolve())
        for case, config in CASES.items():
            workspace = workspace_for(Path(scratch), case, config)
            for runtime in runtimes:  # warm-up: image build, page cache
                run_once(runtime, workspace, env)
            contenders: dict[str, Callable[[], float]] = {
                runtime: functools.partial(run_once, runtime, workspace, env) for runtime in runtimes}
            if case == "true" and "sandbox" in runtimes:
                contenders["bwrap_floor"] = bwrap_once
            if case == "multi" and "sandbox" in runtimes:
                cold = workspace_for(Path(scratch), f"{case}-afresh", afresh(config))
                run_once("sandbox", cold, env)
                contenders["sandbox_afresh"] = functools.partial(run_once, "sandbox", cold, env)
                seed = Path(scratch) / "floor-seed"
                seed.mkdir()
                if os.getuid() == 0:
                    os.chown(seed, WORKSPACE_UID, WORKSPACE_UID)
                subprocess.run(as_service_user(["sh", str(FLOOR_SCRIPT), "seed", str(seed)]), check=True,
                               capture_output=True, cwd="/")
                contenders["floor_script_cold"] = functools.partial(floor_script_once, "cold", seed)
                contenders["floor_script_warm"] = functools.partial(floor_script_once, "warm", seed)
            times: dict[str, list[float]] = {name: [] for name in contenders}
            names = list(contenders)
            for index in range(args.runs):  # rotating order: the machines are noisy
                for name in names[index % len(names):] + names[:index % len(names)]:
                    times[name].append(contenders[name]())
            results[case] = times
    return results


def runtime_layer(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """The sandbox runtime alone: what a run costs it, without moat's CLI, image check or record."""
    from moat.catalog import load_catalog
    from moat.config.load import parse_config
    from moat.masking import Masker
    from moat.plan.build import RunRequest, build_plan
    from moat.plan.identity import Identity
    from moat.runtime.sandbox import SandboxRuntime
    from moat.services.readiness import wait_ready

    catalog = load_catalog()
    who = Identity(WORKSPACE_UID, WORKSPACE_UID) if os.getuid() == 0 else Identity(os.getuid(), os.getgid())
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="moat-bench-") as scratch:
        for case, config in CASES.items():
            workspace = workspace_for(Path(scratch), case, config)
            times: dict[str, list[float]] = {"sandbox": [], "sandbox-ready": []}
            for index in range(args.runs + 1):  # the first is a warm-up
                request = RunRequest(workspace=workspace, command=("true",), identity=who, home=Path(scratch) / "home",
                                     scratch_root=Path(scratch), runtime="sandbox")
                plan = build_plan(parse_config(config, catalog), request, catalog)
                runtime = SandboxRuntime(request.home, who)
                start = time.perf_counter()
                ids: dict[str, str] = {}
                try:
                    runtime.create_network(plan.network, plan.labels, str(plan.scratch))
                    for service in plan.services:
                        ids[service.name] = runtime.create_container(service.container, {})
                        runtime.start_container(ids[service.name])
                    waits = [threading.Thread(target=wait_ready, args=(runtime, ids[s.name], s, plan.network,
                                                                       threading.Event(), Masker()))
                             for s in plan.services]
                    for wait in waits:
                        wait.start()
                    for wait in waits:
                        wait.join()
                    ready = time.perf_counter() - start
                    ids["agent"] = runtime.create_container(plan.agent, {})
                    runtime.start_container(ids["agent"])
                    for _ in runtime.attach(ids["agent"]):
                        pass
                    code = runtime.wait(ids["agent"])
                finally:
                    for cid in reversed(ids.values()):
                        runtime.remove_container(cid)
                    runtime.remove_network(plan.network)
                if code != 0:
                    raise SystemExit(f"the agent exited with {code}")
                if index:
                    times["sandbox"].append(time.perf_counter() - start)
                    times["sandbox-ready"].append(ready)
            results[case] = times
    return results


def main() -> None:
    # moat as its users run it: with its modules' bytecode cached (an environment that forbids writing
    # it makes every start compile moat from source, ~0.1 s).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--layer", choices=("cli", "runtime"), default="cli")
    parser.add_argument("--runtimes", default="docker,sandbox", help="for --layer cli (comma-separated)")
    parser.add_argument("--moat-src", help="for --layer cli: the src/ directory of the moat to run")
    args = parser.parse_args()
    results = cli(args) if args.layer == "cli" else runtime_layer(args)
    what = ("moat run -- true" if args.layer == "cli"
            else "the sandbox runtime: network, services ready, agent, teardown")
    print(f"{what}, {args.runs} runs each (seconds)")
    print(f"{'case':<8} {'measure':<14} {'median':>7} {'min':>7} {'max':>7}")
    report: dict[str, dict[str, float]] = {}
    for case, times in results.items():
        report[case] = {}
        for name, values in times.items():
            print(f"{case:<8} {name:<14} {statistics.median(values):7.3f} {min(values):7.3f} {max(values):7.3f}")
            report[case][f"{name}_median"] = statistics.median(values)
        if "docker" in times and "sandbox" in times:
            ratio = statistics.median(times["sandbox"]) / statistics.median(times["docker"])
            print(f"{case:<8} sandbox/docker = {ratio:.2f}")
            report[case]["sandbox_over_docker"] = ratio
        if "bwrap_floor" in times:
            sandbox = statistics.median(times["sandbox"])
            verdict = "meets goal" if sandbox <= SANDBOX_TRUE_GOAL else "MISSES goal"
            print(f"{case:<8} sandbox {sandbox:.3f} s (goal <= {SANDBOX_TRUE_GOAL} s: {verdict}),"
                  f" bwrap floor {statistics.median(times['bwrap_floor']):.3f} s")
            report[case]["sandbox_minus_bwrap_floor"] = sandbox - statistics.median(times["bwrap_floor"])
        if "floor_script_warm" in times:
            sandbox = statistics.median(times["sandbox"])
            verdict = "meets goal" if sandbox <= SANDBOX_MULTI_WARM_GOAL else "MISSES goal"
            warm_floor, cold_floor = (statistics.median(times[k]) for k in ("floor_script_warm", "floor_script_cold"))
            afresh_run = statistics.median(times["sandbox_afresh"])
            print(f"{case:<8} sandbox warm {sandbox:.3f} s (goal <= {SANDBOX_MULTI_WARM_GOAL} s: {verdict});"
                  f" warm/script floor {sandbox / warm_floor:.2f}, afresh/script floor {afresh_run / cold_floor:.2f},"
                  f" warm/afresh {sandbox / afresh_run:.2f}")
            report[case].update(sandbox_warm_over_floor=sandbox / warm_floor,
                                sandbox_afresh_over_floor=afresh_run / cold_floor,
                                sandbox_warm_over_afresh=sandbox / afresh_run)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
