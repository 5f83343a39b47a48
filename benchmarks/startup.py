"""Start-up of moat against docker-compose, testcontainers, the reference algorithm and the floor.

    python benchmarks/startup.py [--runs N] [--json FILE]      (or: make bench)

On the local engine and images, after a warm-up of each contender and in rotating order, N times:
postgres + mysql + redis, then a trivial agent container that prints one line. Each contender is timed
from its start to the agent's first output line (and to its exit).

The floor is honest: it has every trick moat uses (data in memory, parallel start, cheap probes, the
agent's container created while the services start) and nothing moat cannot have; the floor with the
data on disk (this benchmark's floor before) is a second line. moat runs warm (the same MOAT_HOME,
its proxy daemon running) and cold (a new MOAT_HOME each time: no daemon, no cache); the peers keep
no state between runs, so their one column is both. A strict run with one grant is timed against
the same strict run without it: what a grant adds. Also measured: moat's readiness lag (a service
answering → moat noticing) and CLI start-up. Prints medians, min/max and each figure beside its goal
(issue 14's); ``--json`` writes the figures (keys in the README).
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from benchmarks import compose_peer, direct, lag  # noqa: E402
from benchmarks.common import AGENT_LINE  # noqa: E402

MOAT = [str(ROOT / ".venv" / "bin" / "moat")]
TC_PYTHON = ROOT / "benchmarks" / ".peers" / "testcontainers" / "bin" / "python"
GOALS: dict[str, float | None] = {
    "moat_cold_over_floor": 1.10,  # the honest (tmpfs) floor
    "moat_warm_over_floor": 0.60,  # below the floor: warm services (issue 14, not built yet)
    "moat_cold_over_compose": 0.50,
    "moat_cold_over_testcontainers": 0.40,
    "moat_over_reference": 0.92,
    "moat_over_disk_floor": None,  # the old floor, for comparison with earlier reports
    "grant_added_seconds": 0.15,  # strict + one grant, minus the same strict run without it
    "readiness_lag_ms_median": 50.0,
    "help_seconds_median": 0.10,
    "run_imports_seconds_median": 0.15,  # the interpreter and what a `moat run` imports
}
GRANT_TOKEN = "ghp_benchmarkPlaceholderToken0123456789abcd"  # stored for the run, never used: no request is made


def _localized_example(scratch: Path) -> Path:
    sys.path.insert(0, str(ROOT / "engine"))
    import localize  # type: ignore[import-not-found]

    return Path(localize.localize(ROOT / "examples" / "multi-service", scratch / "multi-service"))


def _strict_copy(workspace: Path, grant: bool) -> Path:
    """The example under network.policy: strict, with the github grant or without."""
    target = workspace.parent / f"{workspace.name}-strict{'-grant' if grant else ''}"
    subprocess.run(["cp", "-a", str(workspace), str(target)], check=True)
    config = target / "moat.yaml"
    config.write_text(config.read_text() + ("grants: [github]\n" if grant else "") + "network:\n  policy: strict\n")
    return target


# The benchmark's homes keep their keys in a file: a desktop's keyring would keep one entry per home.
BENCH_ENV = {"MOAT_KEYRING_BACKEND": "file"}


def _store_grant(home: Path) -> None:
    env = {**os.environ, **BENCH_ENV, "MOAT_HOME": str(home), "BENCH_TOKEN": GRANT_TOKEN}
    subprocess.run([*MOAT, "grant", "github", "--token-env", "BENCH_TOKEN", "--no-validate"], env=env,
                   capture_output=True, check=True)


def _stop_proxy(home: Path) -> None:
    subprocess.run([*MOAT, "proxy", "stop"], env={**os.environ, "MOAT_HOME": str(home)}, capture_output=True,
                   check=False)


def moat_cold(workspace: Path, scratch: Path, grant: bool = False) -> dict[str, float]:
    """A run in a new MOAT_HOME: no proxy daemon, no cache, no record (set up outside the timing)."""
    home = Path(tempfile.mkdtemp(prefix="cold-home-", dir=scratch))
    if grant:
        _store_grant(home)
    try:
        return moat_run(workspace, home)
    finally:
        _stop_proxy(home)
        subprocess.run(["rm", "-rf", str(home)], check=True)


def moat_run(workspace: Path, home: Path) -> dict[str, float]:
    env = {**os.environ, **BENCH_ENV, "MOAT_HOME": str(home)}
    started = time.monotonic()
    proc = subprocess.Popen([*MOAT, "run", str(workspace), "--", "echo", AGENT_LINE], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    first = None
    for line in proc.stdout:
        if first is None and AGENT_LINE in line:
            first = time.monotonic() - started
    proc.wait()
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"moat run failed (exit {proc.returncode})")
    return {"first_output": first, "total": time.monotonic() - started}


def testcontainers_run() -> dict[str, float]:
    done = subprocess.run([str(TC_PYTHON), str(ROOT / "benchmarks" / "tc_peer.py")], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"testcontainers failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cli_startup(runs: int) -> dict[str, float]:
    def timed(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        return time.perf_counter() - start

    figures: dict[str, list[float]] = {"python -c pass": [], "moat --help": [], "moat deps list": []}
    for _ in range(runs):
        figures["python -c pass"].append(timed([sys.executable, "-c", "pass"]))
        figures["moat --help"].append(timed([*MOAT, "--help"]))
        figures["moat deps list"].append(timed([*MOAT, "deps", "list"]))
    return {name: statistics.median(values) for name, values in figures.items()}


def run_imports(workspace: Path, home: Path, runs: int) -> dict[str, float]:
    """The interpreter and the modules a real `moat run` of the example imports: the modules listed by
    one run under ``-X importtime``, then imported alone in a fresh interpreter (``runs`` times)."""
    env = {**os.environ, **BENCH_ENV, "MOAT_HOME": str(home)}
    traced = subprocess.run([sys.executable, "-X", "importtime", "-m", "moat", "run", str(workspace), "--", "true"],
                            env=env, capture_output=True, text=True, check=True)
    modules = [line.rsplit("|", 1)[1].strip() for line in traced.stderr.splitlines()
               if line.startswith("import time:") and not line.rsplit("|", 1)[1].startswith("  ")
               and "|" in line and not line.rsplit("|", 1)[1].strip().startswith("package")]
    modules = [m for m in modules if m and m.replace(".", "").replace("_", "").isalnum()]
    script = "import " + ", ".join(dict.fromkeys(modules))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "modules": float(len(set(modules)))}


def main() -> None:
    # moat as its users run it: with its modules' bytecode cached (an environment that forbids writing
    # it makes every start compile moat from source, ~0.1 s).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--skip", action="append", default=[], choices=["compose", "testcontainers"],
                        help="leave a peer out (e.g. where it cannot be installed)")
    args = parser.parse_args()
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="moat-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        workspace = _localized_example(scratch)
        home = scratch / "home"
        _store_grant(home)
        try:
            measure(args, client, scratch, workspace, home)
        finally:
            _stop_proxy(home)  # whatever failed: the warm home's daemon does not outlive it


def measure(args: argparse.Namespace, client: Any, scratch: Path, workspace: Path, home: Path) -> None:
    strict, granted = _strict_copy(workspace, grant=False), _strict_copy(workspace, grant=True)
    contenders: dict[str, Any] = {
        "moat": lambda: moat_run(workspace, home),
        "moat_cold": lambda: moat_cold(workspace, scratch),
        "moat_strict": lambda: moat_run(strict, home),
        "moat_strict_grant": lambda: moat_run(granted, home),
        "moat_strict_grant_cold": lambda: moat_cold(granted, scratch, grant=True),
        "floor": lambda: direct.floor(client),
        "disk_floor": lambda: direct.disk_floor(client),
        "reference": lambda: direct.reference(client),
    }
    if "compose" not in args.skip:
        contenders["compose"] = compose_peer.run
    if "testcontainers" not in args.skip:
        contenders["testcontainers"] = testcontainers_run
    for run in contenders.values():  # warm-up: the agent image build, page cache, first-run costs
        run()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    names = list(contenders)
    for index in range(args.runs):
        for name in names[index % len(names):] + names[:index % len(names)]:  # rotating order
            results[name].append(contenders[name]())
    lag_home = scratch / "lag-home"
    service_lags: list[float] = []
    for _ in range(args.runs):
        with lag.Watcher(client, lag_home) as watcher:
            moat_run(workspace, lag_home)
        service_lags += list(lag.lags(lag_home, watcher.first).values())
        for log in lag_home.glob("runs/*"):
            subprocess.run(["rm", "-rf", str(log)], check=True)
    cli = cli_startup(max(args.runs, 7))
    cli.update({"moat run's imports": run_imports(workspace, home, max(args.runs, 7))["seconds"]})
    report(results, service_lags, cli, args)


def report(results: dict[str, list[dict[str, float]]], service_lags: list[float], cli: dict[str, float],
           args: argparse.Namespace) -> None:
    medians = {name: statistics.median(r["first_output"] for r in runs) for name, runs in results.items()}
    print(f"start-up to the agent's first output line, {args.runs} runs each after a warm-up (seconds)")
    print(f"{'contender':<24} {'median':>7} {'min':>7} {'max':>7} {'exit median':>12}")
    for name, runs in results.items():
        firsts = [r["first_output"] for r in runs]
        print(f"{name:<24} {medians[name]:7.3f} {min(firsts):7.3f} {max(firsts):7.3f}"
              f" {statistics.median(r['total'] for r in runs):12.3f}")
    def ratio(top: str, bottom: str) -> float | None:
        return medians[top] / medians[bottom] if top in medians and bottom in medians else None

    figures: dict[str, float | None] = {
        "moat_cold_over_floor": ratio("moat_cold", "floor"),
        "moat_warm_over_floor": ratio("moat", "floor"),
        "moat_cold_over_compose": ratio("moat_cold", "compose"),
        "moat_cold_over_testcontainers": ratio("moat_cold", "testcontainers"),
        "moat_over_reference": ratio("moat", "reference"),
        "moat_over_disk_floor": ratio("moat", "disk_floor"),
        "grant_added_seconds": medians["moat_strict_grant"] - medians["moat_strict"],
        "readiness_lag_ms_median": statistics.median(service_lags) * 1000 if service_lags else None,
        "help_seconds_median": cli["moat --help"],
        "run_imports_seconds_median": cli["moat run's imports"],
    }
    print()
    for key, value in figures.items():
        goal = GOALS[key]
        verdict = "-" if value is None or goal is None else ("meets goal" if value <= goal else "MISSES goal")
        shown = "n/a" if value is None else f"{value:.3f}"
        print(f"{key:<30} {shown:>8}   goal {'<= ' + str(goal) if goal is not None else '(none)':<9} {verdict}")
    print()
    print("CLI start-up (medians, seconds): " + ", ".join(f"{k} {v:.3f}" for k, v in cli.items()))
    if service_lags:
        print(f"readiness lag per service (ms): min {min(service_lags) * 1000:.0f}, "
              f"max {max(service_lags) * 1000:.0f}, {len(service_lags)} samples")
    if args.json:
        payload = {**figures, "medians_seconds": medians, "cli_seconds": cli,
                   "runs": {name: runs for name, runs in results.items()}}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
